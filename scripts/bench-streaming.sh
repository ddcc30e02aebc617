#!/usr/bin/env bash
# Result-streaming benchmark (tally vs the local PostgreSQL 15), see BENCHMARKS.md.
# Usage: scripts/bench-streaming.sh [rows]   (default 1000000)
set -euo pipefail
cd "$(dirname "$0")/.."
exec scripts/with-release-tally.sh sh -c 'python3 scripts/bench_streaming.py --tally-port "$TALLY_PORT" --rows "$1"' _ "${1:-1000000}"
