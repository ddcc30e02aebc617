"""Shared fixtures for the client compatibility suite.

The suite talks to a running server over the PostgreSQL wire protocol. It is normally started
by ``scripts/clients.sh``, which launches tally on a fresh data folder and exports
``TALLY_PORT``. The same tests must pass against a real PostgreSQL, which is how we check that
an assertion describes PostgreSQL's behaviour and not an accident of tally's::

    TALLY_PORT=5432 TALLY_DB=test TALLY_USER=postgres python3 -m pytest -q tests/clients

Environment:
    TALLY_HOST      server address (default 127.0.0.1)
    TALLY_PORT      server port (required)
    TALLY_DB        database name (default ``tally``)
    TALLY_USER      user name (default ``tally``)
    TALLY_PASSWORD  password (default: none; tally trusts loopback when no users are set)
    TALLY_TEST_TIMEOUT  seconds after which a single test is failed as hung (default 120)

Isolation: every test that creates objects gets its own schema (``schema`` fixture) or its own
unique object names in ``public`` (``public_name`` fixture), dropped afterwards, so tests never
collide with each other or with earlier runs against the same server.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import uuid
from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class ConnInfo:
    """How to reach the server under test."""

    host: str
    port: int
    dbname: str
    user: str
    password: str | None

    def conninfo(self, **extra: str) -> str:
        """A libpq key/value connection string (psycopg, psql)."""
        parts = {
            "host": self.host,
            "port": str(self.port),
            "dbname": self.dbname,
            "user": self.user,
            "connect_timeout": "10",
        }
        if self.password:
            parts["password"] = self.password
        parts.update(extra)
        return " ".join(f"{k}='{v}'" for k, v in parts.items())

    def url(self, driver: str = "postgresql+psycopg") -> str:
        """A SQLAlchemy URL."""
        auth = self.user if not self.password else f"{self.user}:{self.password}"
        return f"{driver}://{auth}@{self.host}:{self.port}/{self.dbname}"

    def jdbc_url(self) -> str:
        """A pgjdbc URL, the form DBeaver and Metabase build."""
        url = f"jdbc:postgresql://{self.host}:{self.port}/{self.dbname}?user={self.user}"
        if self.password:
            url += f"&password={self.password}"
        return url

    def psql_env(self) -> dict[str, str]:
        """Environment for a psql child process: no psqlrc surprises, our password."""
        env = dict(os.environ)
        for k in ("PGSERVICE", "PGOPTIONS", "PGHOST", "PGPORT", "PGDATABASE", "PGUSER"):
            env.pop(k, None)
        if self.password:
            env["PGPASSWORD"] = self.password
        env["PGCONNECT_TIMEOUT"] = "10"
        # Stable output: no pager, English messages, C collation for sorting in psql itself.
        env["PAGER"] = "cat"
        env["PSQL_PAGER"] = "cat"
        env["LC_ALL"] = "C.UTF-8"
        env["LANG"] = "C.UTF-8"
        env["PGCLIENTENCODING"] = "UTF8"
        return env


def _conn_info() -> ConnInfo:
    port = os.environ.get("TALLY_PORT")
    if not port:
        raise pytest.UsageError(
            "TALLY_PORT is not set: run scripts/clients.sh, or point the suite at a server "
            "(TALLY_PORT=5432 TALLY_DB=test TALLY_USER=postgres)"
        )
    return ConnInfo(
        host=os.environ.get("TALLY_HOST", "127.0.0.1"),
        port=int(port),
        dbname=os.environ.get("TALLY_DB", "tally"),
        user=os.environ.get("TALLY_USER", "tally"),
        password=os.environ.get("TALLY_PASSWORD") or None,
    )


def pytest_configure(config: pytest.Config) -> None:
    # Fail fast, before collection, when the suite has no server to talk to.
    _conn_info()


# --- hang protection -------------------------------------------------------------------------
# A young server can fail by never answering (e.g. a protocol message it does not handle).
# A hung test must fail on its own instead of stalling the whole suite, so each test gets an
# alarm. This bounds a hang; it asserts nothing about speed.


class HungTest(Exception):
    """Raised inside a test that ran longer than TALLY_TEST_TIMEOUT seconds."""


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item):
    limit = int(os.environ.get("TALLY_TEST_TIMEOUT", "120"))

    def on_alarm(signum, frame):
        raise HungTest(f"{item.nodeid} did not finish within {limit}s (server not answering?)")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(limit)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# --- psql helper -----------------------------------------------------------------------------


class Psql:
    """Runs the real ``psql`` binary against the server under test."""

    def __init__(self, info: ConnInfo):
        self.info = info

    def base_args(self) -> list[str]:
        return [
            "psql",
            "-X",  # no ~/.psqlrc
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            self.info.host,
            "-p",
            str(self.info.port),
            "-U",
            self.info.user,
            "-d",
            self.info.dbname,
        ]

    def run(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        cwd: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Runs psql with extra arguments; with check, a non-zero exit fails with stderr."""
        proc = subprocess.run(
            self.base_args() + list(args),
            input=input,
            capture_output=True,
            text=True,
            env=self.info.psql_env(),
            cwd=cwd,
            timeout=60,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"psql {' '.join(args)} exited {proc.returncode}\n"
                f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
            )
        return proc

    def sql(self, sql: str) -> str:
        """Runs SQL over the simple query protocol; returns unaligned, tuples-only output."""
        return self.run("-A", "-t", "-q", "-c", sql).stdout

    def script(self, script: str, *args: str) -> subprocess.CompletedProcess[str]:
        """Feeds a script (SQL and backslash commands) on standard input."""
        return self.run(*args, "-f", "-", input=script)


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def info() -> ConnInfo:
    """Connection parameters of the server under test."""
    return _conn_info()


@pytest.fixture(scope="session")
def psql(info: ConnInfo) -> Psql:
    """The psql runner (also used to set up and tear down test objects: simple protocol only)."""
    return Psql(info)


@pytest.fixture(scope="session")
def is_tally(psql: Psql) -> bool:
    """True when the server under test is tally (its version() names it), not PostgreSQL."""
    return "tally" in psql.sql("select version()").lower()


def _unique(request: pytest.FixtureRequest, prefix: str) -> str:
    """A lower-case identifier unique to this test run: prefix, test name, random suffix."""
    name = re.sub(r"[^a-z0-9]+", "_", request.node.name.lower()).strip("_")
    name = name.removeprefix("test_")[:30].rstrip("_")
    return f"{prefix}_{name}_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def schema(request: pytest.FixtureRequest, psql: Psql):
    """A fresh, empty schema for one test, dropped with everything in it afterwards."""
    name = _unique(request, "s")
    psql.sql(f"create schema {name}")
    yield name
    psql.run("-q", "-c", f"drop schema if exists {name} cascade", check=False)


@pytest.fixture
def public_name(request: pytest.FixtureRequest, psql: Psql):
    """Factory of unique object names in ``public`` (for tools that look only at ``public``).

    Call it with a kind ("table" or "view"); every object is dropped after the test, views
    first.
    """
    made: list[tuple[str, str]] = []

    def make(kind: str = "table") -> str:
        name = _unique(request, "t" if kind == "table" else "v")
        made.append((kind, name))
        return name

    yield make
    for kind, name in sorted(made, key=lambda m: m[0] != "view"):
        psql.run("-q", "-c", f"drop {kind} if exists public.{name} cascade", check=False)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Marks the known gaps (``known_gaps.py``) as strict expected failures against tally."""
    from known_gaps import KNOWN_GAPS

    try:
        version = Psql(_conn_info()).sql("select version()")
    except Exception:  # the server is down: let the tests report it
        return
    if "tally" not in version.lower():
        return
    for item in items:
        key = item.nodeid.split("tests/clients/")[-1]
        reason = KNOWN_GAPS.get(key)
        if reason:
            item.add_marker(pytest.mark.xfail(strict=True, reason=reason))
