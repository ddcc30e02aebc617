#!/usr/bin/env bash
# Client compatibility suite: starts tally on a fresh, throw-away warehouse and runs
# tests/clients (psql, psycopg 3, asyncpg, SQLAlchemy 2 + pandas, pgjdbc, and the Segment and
# RudderStack SDKs against the tracking API, and dbt-core with dbt-postgres) against it.
#
# Installs what it needs on a fresh Debian machine (idempotent, quiet):
#   pip: psycopg[binary] asyncpg sqlalchemy>=2 pandas pytest segment-analytics-python rudder-sdk-python
#   venv ~/.cache/tally/dbt-venv: dbt-core 1.11 + dbt-postgres 1.11
#   npm: @segment/analytics-node (into tests/clients/node)
#   apt: libpostgresql-jdbc-java (pgjdbc jar), and psql / a JDK if they are missing
# Uses $TALLY_BIN, else $CARGO_TARGET_DIR/debug/tally (default ./target/debug/tally), building
# it with `cargo build --bin tally` when missing.
#
# Usage: scripts/clients.sh [pytest args...]     e.g. scripts/clients.sh -k psycopg -x
#        (without arguments it also runs dbt's adapter test suite, tests/dbt_adapter)
# Env:   TALLY_LOG=debug     server log level (the log goes to $TALLY_CLIENTS_LOG)
#        TALLY_CLIENTS_LOG   where to write the server's log (default: a temp file, printed)
#        KEEP_TMP=1          keep the temp data folder after the run
# Exit status: pytest's.
#
# To run the same tests against a real PostgreSQL (to check that an assertion is right):
#   TALLY_PORT=5432 TALLY_DB=test TALLY_USER=postgres python3 -m pytest -q tests/clients
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "clients.sh: $*" >&2; }

# --- dependencies ----------------------------------------------------------------------------

install_python_deps() {
  if python3 - <<'EOF' 2>/dev/null; then
import asyncpg, pandas, psycopg, pytest, sqlalchemy
import segment.analytics, rudderstack.analytics
assert int(sqlalchemy.__version__.split(".")[0]) >= 2
psycopg.pq.version()  # a libpq implementation (binary wheel) is loadable
EOF
    return
  fi
  log "installing Python packages"
  local pkgs=("psycopg[binary]" asyncpg "sqlalchemy>=2" pandas pytest segment-analytics-python rudder-sdk-python)
  local pip=(python3 -m pip install -q --disable-pip-version-check --no-input)
  if ! "${pip[@]}" "${pkgs[@]}" 2>"${TMPDIR:-/tmp}/clients-pip.err"; then
    # Debian's system Python refuses pip installs (PEP 668) unless told otherwise.
    if grep -q externally-managed "${TMPDIR:-/tmp}/clients-pip.err"; then
      "${pip[@]}" --break-system-packages "${pkgs[@]}"
    else
      cat "${TMPDIR:-/tmp}/clients-pip.err" >&2
      return 1
    fi
  fi
}

install_apt_deps() {
  local missing=()
  [ -f /usr/share/java/postgresql.jar ] || missing+=(libpostgresql-jdbc-java)
  command -v psql >/dev/null || missing+=(postgresql-client)
  { command -v javac >/dev/null && command -v java >/dev/null; } || missing+=(openjdk-17-jdk-headless)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

# The Segment Node.js SDK for the tracking API tests (npm registry; package.json pins it).
install_node_deps() {
  command -v npm >/dev/null || { log "npm missing: the Node.js SDK test will fail"; return; }
  if [ ! -d tests/clients/node/node_modules/@segment/analytics-node ]; then
    log "installing @segment/analytics-node"
    (cd tests/clients/node && npm install --no-audit --no-fund --silent)
  fi
}

# dbt-core + dbt-postgres for tests/clients/test_dbt.py, in a virtual environment of their own
# (dbt pins its dependencies tightly). 1.11: dbt-core 1.12 downloads a parser wheel at
# install time from outside the package registry.
install_dbt() {
  local venv="${TALLY_DBT_VENV:-$HOME/.cache/tally/dbt-venv}"
  if [ ! -x "$venv/bin/dbt" ] || ! "$venv/bin/python" -c 'import dbt.tests.adapter, pytest' 2>/dev/null; then
    log "installing dbt-core 1.11, dbt-postgres 1.11 and dbt-tests-adapter into $venv"
    mkdir -p "$(dirname "$venv")"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check --no-input \
      'dbt-core==1.11.*' 'dbt-postgres==1.11.*' 'dbt-tests-adapter==1.20.*' pytest
  fi
  export TALLY_DBT="$venv/bin/dbt" TALLY_DBT_PYTHON="$venv/bin/python"
}

install_python_deps
install_apt_deps
install_node_deps
install_dbt

# --- the server binary -----------------------------------------------------------------------

target_dir="${CARGO_TARGET_DIR:-$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')}"
bin="${TALLY_BIN:-$target_dir/debug/tally}"
if [ ! -x "$bin" ]; then
  log "building tally ($bin is missing)"
  cargo build --bin tally
fi
[ -x "$bin" ] || { log "no tally binary at $bin"; exit 1; }

# --- start tally on free ports and a fresh warehouse ------------------------------------------

# Two distinct free loopback ports (both sockets held open while choosing, so they differ).
read -r pg_port http_port < <(python3 - <<'EOF'
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
EOF
)

tmp="$(mktemp -d "${TMPDIR:-/tmp}/tally-clients.XXXXXX")"
server_log="${TALLY_CLIENTS_LOG:-$tmp/tally.log}"
server_pid=""

cleanup() {
  local status=$?
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill "$server_pid" 2>/dev/null || true
    # Give it a few seconds to shut down cleanly, then insist.
    for _ in $(seq 1 50); do
      kill -0 "$server_pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  if [ "${KEEP_TMP:-0}" = 1 ]; then
    log "kept $tmp"
  else
    # Keep the log when it was written outside the temp folder.
    rm -rf "$tmp"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "starting $bin on 127.0.0.1:$pg_port (log: $server_log)"
# Run from the temp folder so a tally.toml in the working tree is not picked up; clear the
# settings tally reads from the environment so the command line alone decides.
(
  cd "$tmp"
  exec env -u TALLY_CONFIG -u TALLY_DATA -u TALLY_PG_LISTEN -u TALLY_HTTP_LISTEN -u TALLY_MEMORY_LIMIT \
    "$bin" serve --data "$tmp/data" --pg-listen "127.0.0.1:$pg_port" --http-listen "127.0.0.1:$http_port"
) >"$server_log" 2>&1 &
server_pid=$!

# Wait until it answers a query (not just until the port is open).
export PGCONNECT_TIMEOUT=5
ready=0
for _ in $(seq 1 120); do
  if ! kill -0 "$server_pid" 2>/dev/null; then
    log "tally exited during start-up; its log:"
    cat "$server_log" >&2
    exit 1
  fi
  if psql -X -q -h 127.0.0.1 -p "$pg_port" -U tally -d tally -Atc 'select 1' >/dev/null 2>&1; then
    ready=1
    break
  fi
  sleep 0.5
done
if [ "$ready" != 1 ]; then
  log "tally did not accept connections within 60s; its log:"
  tail -n 50 "$server_log" >&2
  exit 1
fi

# --- run the suite ---------------------------------------------------------------------------

export TALLY_BIN="$bin"
export TALLY_HOST=127.0.0.1 TALLY_PORT="$pg_port" TALLY_DB=tally TALLY_USER=tally TALLY_HTTP_PORT="$http_port"
unset TALLY_PASSWORD
rc=0
python3 -m pytest -q -p no:cacheprovider tests/clients "$@" || rc=$?
# dbt's own adapter test suite (its basic classes) through dbt-postgres, in dbt's venv.
if [ "$#" -eq 0 ]; then
  # From the temp folder: dbt's test fixtures write logs/ into the working directory.
  repo="$PWD"
  (cd "$tmp" && "$TALLY_DBT_PYTHON" -m pytest -q -p no:cacheprovider -W ignore::DeprecationWarning \
    "$repo/tests/dbt_adapter") || rc=$?
fi
if [ "$rc" != 0 ]; then
  log "pytest exited $rc; last lines of the server log ($server_log):"
  tail -n 30 "$server_log" >&2 || true
fi
exit "$rc"
