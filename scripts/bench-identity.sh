#!/usr/bin/env bash
# Identity-resolution benchmark (tally identity_stitch vs python-igraph vs DuckDB SQL label
# propagation on the same edges), see scripts/bench_identity.py.
# Usage: scripts/bench-identity.sh [users] [extra bench_identity.py args...]
# (default 1490000 users, about 9.8M edges, the size in issue 5; data cached under
# /tmp/tally-bench-data/)
set -euo pipefail
cd "$(dirname "$0")/.."
users="${1:-1490000}"
shift || true
python3 -c 'import duckdb' 2>/dev/null || python3 -m pip install -q duckdb
python3 -c 'import igraph, pandas' 2>/dev/null || python3 -m pip install -q python-igraph pandas
exec scripts/with-release-tally.sh python3 scripts/bench_identity.py --users "$users" "$@"
