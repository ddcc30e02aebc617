#!/usr/bin/env bash
# Loading benchmark (COPY FROM STDIN and INSERT ... SELECT, tally vs the local PostgreSQL 15),
# see BENCHMARKS.md.
# Usage: scripts/bench-loading.sh [rows]   (default 1000000 COPY rows; INSERT ... SELECT uses 10M)
set -euo pipefail
cd "$(dirname "$0")/.."
exec scripts/with-release-tally.sh sh -c 'python3 scripts/bench_loading.py --tally-port "$TALLY_PORT" --rows "$1"' _ "${1:-1000000}"
