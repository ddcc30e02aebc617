#!/usr/bin/env bash
# Analytic-queries benchmark (tally vs DuckDB on the same Parquet data), see scripts/bench_queries.py.
# Usage: scripts/bench-queries.sh [users] [extra bench_queries.py args...]   (default 20000 users;
# the reference size in /work/shared/bench/README.md is 108000)
set -euo pipefail
cd "$(dirname "$0")/.."
users="${1:-20000}"
shift || true
python3 -c 'import duckdb' 2>/dev/null || python3 -m pip install -q duckdb
exec scripts/with-release-tally.sh python3 scripts/bench_queries.py --users "$users" "$@"
