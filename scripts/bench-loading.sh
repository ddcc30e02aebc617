#!/usr/bin/env bash
# Loading benchmark (COPY FROM STDIN and INSERT ... SELECT, tally vs the local PostgreSQL 15), see BENCHMARKS.md.
# Usage: scripts/bench-loading.sh [rows]   (default 1000000 COPY rows; INSERT ... SELECT uses 10M)
set -euo pipefail
cd "$(dirname "$0")/.."
rows="${1:-1000000}"
cargo build --release --bin tally
target_dir="${CARGO_TARGET_DIR:-$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')}"
python3 -c 'import psycopg' 2>/dev/null || python3 -m pip install -q 'psycopg[binary]'
data=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
http=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$target_dir/release/tally" serve --data "$data" --pg-listen "127.0.0.1:$port" --http-listen "127.0.0.1:$http" >"$data.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; rm -rf "$data" "$data.log"' EXIT
for _ in $(seq 100); do psql -X -q -h 127.0.0.1 -p "$port" -U tally -d tally -c 'select 1' >/dev/null 2>&1 && break; sleep 0.2; done
python3 scripts/bench_loading.py --tally-port "$port" --rows "$rows"
