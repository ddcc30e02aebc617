#!/usr/bin/env bash
# Activation delivery benchmark (webhook throughput, HubSpot-limit rate), see
# scripts/bench_activation.py.
# Usage: scripts/bench-activation.sh [extra bench_activation.py args...]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --example activation_sink
target_dir="${CARGO_TARGET_DIR:-$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')}"
exec scripts/with-release-tally.sh python3 scripts/bench_activation.py --sink "$target_dir/release/examples/activation_sink" "$@"
