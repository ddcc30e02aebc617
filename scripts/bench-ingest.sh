#!/usr/bin/env bash
# Tracking-API ingest benchmark (see BENCHMARKS.md): 100-message /v1/batch requests over
# keep-alive connections with durable acks, tally vs a stand-in of RudderStack's gateway
# design (requests batched into PostgreSQL 15 with COPY, ack after commit), in the same run,
# on the generator's events. Then the time from ack to queryable in tally's tables.
# Usage: scripts/bench-ingest.sh [seconds] [connections]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-20}"
conns="${2:-32}"
data=/tmp/tally-bench-data/users20000
if [ ! -f "$data/events.ndjson" ]; then
  mkdir -p "$data"
  python3 ../shared/datagen/gen_customer_data.py --users 20000 --seed 42 --out "$data"
fi
cargo build --release --example ingest_load --example pg_ingest_standin
target_dir="${CARGO_TARGET_DIR:-$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')}"
export LOADGEN="$target_dir/release/examples/ingest_load" STANDIN="$target_dir/release/examples/pg_ingest_standin"
export EVENTS="$data/events.ndjson" SECONDS_RUN="$seconds" CONNS="$conns"
exec scripts/with-release-tally.sh python3 scripts/bench_ingest.py
