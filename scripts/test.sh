#!/usr/bin/env bash
# Runs the whole test suite: formatting, lints, Rust unit and integration tests (real
# servers on ephemeral ports, SQL logic tests over the wire), then the client suite
# (psql, psycopg, asyncpg, SQLAlchemy + pandas, JDBC) against a running tally.
# Installs what it needs on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
export CARGO_TERM_COLOR=never

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --all-targets -- -D warnings

# The S3 test runs tally against a local S3 server (moto).
command -v moto_server >/dev/null 2>&1 || python3 -m pip install -q 'moto[server]'

echo "== Rust tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi

echo "== client suite"
scripts/clients.sh
