#!/usr/bin/env bash
# Real-time routing benchmark (latency of three routes at 20,000 events/s, ingest with and
# without routes, catch-up after an outage), see scripts/bench_routes.py.
# Usage: scripts/bench-routes.sh [extra bench_routes.py args...]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --example activation_sink --example ingest_load
target_dir="${CARGO_TARGET_DIR:-$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')}"
exec scripts/with-release-tally.sh python3 scripts/bench_routes.py \
  --sink "$target_dir/release/examples/activation_sink" --load "$target_dir/release/examples/ingest_load" "$@"
