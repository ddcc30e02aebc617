#!/usr/bin/env bash
# Captures the exact statement stream dbt-core + dbt-postgres send to tally for the test
# project (tests/clients/dbt_shop): seed, run, test, snapshot, changed seeds, seed
# --full-refresh, run (incremental paths), snapshot (closing changed rows), docs generate.
# The result, tests/streams/dbt_run.sql, is replayed by tests/it/streams.rs on every test run,
# so a change that breaks what dbt sends fails without dbt installed.
#
# Usage: scripts/capture-dbt-stream.sh    (needs dbt: $TALLY_DBT or the venv clients.sh makes)
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
target_dir="${CARGO_TARGET_DIR:-$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')}"
cargo build -q --bin tally
bin="$target_dir/debug/tally"
dbt="${TALLY_DBT:-$HOME/.cache/tally/dbt-venv/bin/dbt}"
[ -x "$dbt" ] || { echo "dbt not found at $dbt: run scripts/clients.sh first" >&2; exit 1; }

tmp="$(mktemp -d)"
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$tmp"' EXIT
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
http_port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
(cd "$tmp" && TALLY_LOG="warn,tally::statement=debug" NO_COLOR=1 exec "$bin" serve --data "$tmp/data" \
  --pg-listen "127.0.0.1:$port" --http-listen "127.0.0.1:$http_port") >"$tmp/tally.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do psql -X -h 127.0.0.1 -p "$port" -U tally -d tally -Atc 'select 1' >/dev/null 2>&1 && break; sleep 0.3; done
kill -0 "$pid" 2>/dev/null || { cat "$tmp/tally.log"; exit 1; }

cp -r tests/clients/dbt_shop "$tmp/project"
cat >"$tmp/project/profiles.yml" <<P
tally_test:
  target: dev
  outputs:
    dev: {type: postgres, host: 127.0.0.1, port: $port, user: tally, password: "", dbname: tally, schema: dbtx, threads: 1}
P
export DBT_PROFILES_DIR="$tmp/project" DBT_SEND_ANONYMOUS_USAGE_STATS=false
run() { "$dbt" --no-use-colors "$@" --project-dir "$tmp/project" >"$tmp/dbt.out" 2>&1 || { cat "$tmp/dbt.out"; exit 1; }; }
run seed; run run; run test; run snapshot
sed -i 's/12,2,42.50,2024-02-04 12:00:00/12,2,45.00,2024-02-06 12:00:00/' "$tmp/project/seeds/raw_orders.csv"
echo "14,4,3.00,2024-02-07 09:00:00" >>"$tmp/project/seeds/raw_orders.csv"
sed -i 's/2,bob@example.com,free,2024-01-04 11:30:00/2,bob@example.com,pro,2024-03-01 08:00:00/' "$tmp/project/seeds/raw_customers.csv"
run seed --full-refresh; run run; run snapshot; run docs generate
version="$("$dbt" --version | awk '/installed:/ {print $3; exit}')"

python3 - "$tmp/tally.log" tests/streams/dbt_run.sql "$version" <<'PY'
import re, sys
raw = open(sys.argv[1], encoding="utf8", errors="replace").read()
raw = re.sub(r"\x1b\[[0-9;]*m", "", raw)
records = re.split(r"\n(?=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z )", raw)
clients, out = {}, []
for r in records:
    m = re.match(r'\S+\s+DEBUG tally::statement: (.*) client=\S+:(\d+) protocol="(\w+)"\s*$', r, re.S)
    if m:
        # Connections numbered in order of first appearance, so the file is stable.
        c = clients.setdefault(m.group(2), len(clients) + 1)
        out.append((c, m.group(3), m.group(1).strip()))
with open(sys.argv[2], "w") as f:
    f.write(f"-- Statement stream of dbt-core {sys.argv[3]} + dbt-postgres against tally, captured by\n")
    f.write("-- scripts/capture-dbt-stream.sh; replayed by tests/it/streams.rs. Each statement is\n")
    f.write("-- preceded by a line naming the connection (1..n) and the protocol it used.\n")
    for c, proto, sql in out:
        f.write(f"--- connection {c} {proto}\n{sql}\n")
print(f"{len(out)} statements on {len(clients)} connections")
PY
