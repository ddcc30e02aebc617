#!/usr/bin/env bash
# Function benchmark: tally's SQL functions vs DuckDB's nearest equivalents, one core each,
# over datagen-derived data (see scripts/bench_udfs.py). Builds udfs/examples/bench_udfs.rs
# in release (no server build needed).
# Usage: scripts/bench-udfs.sh [rows] [extra bench_udfs.py args...]   (default 10000000 rows)
set -euo pipefail
cd "$(dirname "$0")/.."
rows="${1:-10000000}"
shift || true
python3 -c 'import duckdb' 2>/dev/null || python3 -m pip install -q duckdb
exec python3 scripts/bench_udfs.py --rows "$rows" "$@"
