#!/usr/bin/env bash
# SQL-model benchmark (issue 7): a generated 50-model dbt project over the generator's events,
# timed in one run with `tally models run` (embedded and against `tally serve`), dbt-core +
# dbt-postgres against `tally serve`, and dbt-core + dbt-duckdb against DuckDB; plus the
# runner's per-model overhead (50 trivial views). See scripts/bench_models.py.
#
# Usage: scripts/bench-models.sh [--users 108000] [--runs 3] [--threads 4] [--work DIR]
#   --users 108000 gives about 4.75M events (the issue's 5M); data is cached in
#   /tmp/tally-bench-data/users<N>/, the warehouse, DuckDB file and projects in --work
#   (default /tmp/tally-bench-models).
# Env: TALLY_BIN to use an existing binary instead of building the release one (numbers from a
#      debug build mean nothing); TALLY_BENCH_VENV for the dbt virtual environment (default
#      ~/.cache/tally/dbt-duckdb-venv: dbt-core 1.11, dbt-postgres 1.11, dbt-duckdb 1.11).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${TALLY_BIN:-}" ]; then
  cargo build --release --bin tally
  target_dir="${CARGO_TARGET_DIR:-$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')}"
  TALLY_BIN="$target_dir/release/tally"
fi
venv="${TALLY_BENCH_VENV:-$HOME/.cache/tally/dbt-duckdb-venv}"
if [ ! -x "$venv/bin/dbt" ] || ! "$venv/bin/python" -c 'import dbt.adapters.duckdb, dbt.adapters.postgres' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'dbt-core==1.11.*' 'dbt-postgres==1.11.*' 'dbt-duckdb==1.11.*'
fi
python3 -c 'import duckdb' 2>/dev/null || python3 -m pip install -q duckdb
TALLY_BIN="$TALLY_BIN" TALLY_DBT="$venv/bin/dbt" exec python3 scripts/bench_models.py "$@"
