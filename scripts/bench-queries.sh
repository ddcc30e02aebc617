#!/usr/bin/env bash
# Analytic-queries benchmark (tally vs DuckDB on the same Parquet data), see scripts/bench_queries.py.
# Usage: scripts/bench-queries.sh [users] [extra bench_queries.py args...]   (default 20000 users;
# the reference size in /work/shared/bench/README.md is 108000)
set -euo pipefail
cd "$(dirname "$0")/.."
users="${1:-20000}"
shift || true
cargo build --release --bin tally
target_dir="${CARGO_TARGET_DIR:-$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')}"
python3 -c 'import psycopg' 2>/dev/null || python3 -m pip install -q 'psycopg[binary]'
python3 -c 'import duckdb' 2>/dev/null || python3 -m pip install -q duckdb
data=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
http=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$target_dir/release/tally" serve --data "$data" --pg-listen "127.0.0.1:$port" --http-listen "127.0.0.1:$http" >"$data.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$data" "$data.log"' EXIT
ready=
for _ in $(seq 150); do
  if psql -X -q -h 127.0.0.1 -p "$port" -U tally -d tally -c 'select 1' >/dev/null 2>&1; then ready=1; break; fi
  kill -0 $pid 2>/dev/null || break
  sleep 0.2
done
if [ -z "$ready" ]; then echo "tally did not start; log:" >&2; cat "$data.log" >&2; exit 1; fi
TALLY_PORT="$port" python3 scripts/bench_queries.py --users "$users" "$@"
