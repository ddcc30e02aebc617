#!/usr/bin/env bash
# Enrichment benchmark (issue 4): keys/s of enrich() against a local lookup API that answers
# each request after 20 ms, with batching and concurrency, against the ceiling that the
# connection's rate limit sets; see scripts/bench_enrich.py.
# Usage: scripts/bench-enrich.sh [extra bench_enrich.py args...]
# (TALLY_BIN=<path> skips the release build and uses that binary.)
set -euo pipefail
cd "$(dirname "$0")/.."
exec scripts/with-release-tally.sh python3 scripts/bench_enrich.py "$@"
