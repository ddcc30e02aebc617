#!/usr/bin/env bash
# Sync diff benchmark (issue 6): the change set of a sync's second run over a model with 1%
# changed rows, tally's streamed diff against DuckDB's anti-join of two equivalent snapshots,
# see scripts/bench_sync_diff.py.
# Usage: scripts/bench-sync-diff.sh [rows] [extra bench_sync_diff.py args...]
# (default 10000000 rows; TALLY_BIN=<path> skips the release build and uses that binary, for
# checking the script against a debug build with a small row count)
set -euo pipefail
cd "$(dirname "$0")/.."
rows="${1:-10000000}"
shift || true
python3 -c 'import duckdb' 2>/dev/null || python3 -m pip install -q duckdb
exec scripts/with-release-tally.sh python3 scripts/bench_sync_diff.py --rows "$rows" "$@"
