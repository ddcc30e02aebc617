#!/usr/bin/env bash
# Builds tally in release mode, starts it on a temporary warehouse and free ports, runs the
# given command with TALLY_PORT set, and stops the server afterwards. The benchmark scripts
# use it so that every benchmark measures the same kind of server.
# Usage: scripts/with-release-tally.sh <command> [args...]
# TALLY_BIN=<path> runs that binary instead of building the release one (to check a benchmark
# script quickly against a debug build; numbers from such a run mean nothing).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${TALLY_BIN:-}" ]; then
  bin="$TALLY_BIN"
else
  cargo build --release --bin tally
  target_dir="${CARGO_TARGET_DIR:-$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')}"
  bin="$target_dir/release/tally"
fi
python3 -c 'import psycopg' 2>/dev/null || python3 -m pip install -q 'psycopg[binary]'
data=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)
http=$(free_port)
"$bin" serve --data "$data" --pg-listen "127.0.0.1:$port" --http-listen "127.0.0.1:$http" >"$data.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$data" "$data.log"' EXIT
ready=
for _ in $(seq 150); do
  if psql -X -q -h 127.0.0.1 -p "$port" -U tally -d tally -c 'select 1' >/dev/null 2>&1; then ready=1; break; fi
  kill -0 $pid 2>/dev/null || break
  sleep 0.2
done
if [ -z "$ready" ]; then echo "tally did not start; log:" >&2; cat "$data.log" >&2; exit 1; fi
TALLY_PORT="$port" TALLY_HTTP_PORT="$http" TALLY_DATA_DIR="$data" "$@"
