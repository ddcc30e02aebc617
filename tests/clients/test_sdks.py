"""The real Segment and RudderStack SDKs, unchanged, sending to tally's tracking API.

Every event an SDK reports as sent (no error callback) must be in the source's tables, with
its properties and traits as columns. Runs only against tally (it needs ``TALLY_HTTP_PORT``,
exported by ``scripts/clients.sh``); PostgreSQL has no tracking API.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import psycopg
import pytest

HTTP_PORT = os.environ.get("TALLY_HTTP_PORT")
pytestmark = pytest.mark.skipif(not HTTP_PORT, reason="needs tally's HTTP API (TALLY_HTTP_PORT)")

N_EVENTS = 300


@pytest.fixture
def source(info):
    """A fresh source: (name, write key, psycopg connection)."""
    name = f"sdk_{uuid.uuid4().hex[:10]}"
    conn = psycopg.connect(info.conninfo(), autocommit=True)
    conn.execute(f"CREATE SOURCE {name} TYPE tracking_api")
    key = conn.execute("SELECT write_key FROM tally.sources WHERE name = %s", (name,)).fetchone()[0]
    yield name, key, conn
    conn.execute(f"DROP SOURCE IF EXISTS {name}")
    conn.close()


def host() -> str:
    return f"http://127.0.0.1:{HTTP_PORT}"


def wait_for(conn, sql: str, want, timeout: float = 30.0):
    """Polls a one-value query until it equals ``want``; returns the last value."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = conn.execute(sql).fetchone()[0]
        except psycopg.errors.UndefinedTable:
            last = None
        if last == want:
            return last
        time.sleep(0.2)
    return last


def _send_with(client, errors):
    ids = []
    for i in range(N_EVENTS):
        mid = str(uuid.uuid4())
        client.track(
            user_id=f"user-{i % 7}",
            event="Order Completed",
            properties={"revenue": i + 0.5, "currency": "EUR", "order_id": f"o{i}"},
            message_id=mid,
        )
        ids.append(mid)
    client.identify(user_id="user-1", traits={"email": "one@example.com", "plan": "pro"})
    client.page(user_id="user-1", name="Pricing", properties={"path": "/pricing"})
    client.group(user_id="user-1", group_id="acme", traits={"employees": 12})
    client.alias(previous_id="anon-1", user_id="user-1")
    client.flush()
    client.join()
    assert not errors, f"the SDK reported errors: {errors[:3]}"
    return ids


def _check(conn, name, ids):
    assert wait_for(conn, f"SELECT count(*) FROM {name}.order_completed", N_EVENTS) == N_EVENTS
    stored = {r[0] for r in conn.execute(f"SELECT message_id FROM {name}.tracks").fetchall()}
    assert set(ids) <= stored
    total = conn.execute(f"SELECT sum(revenue) FROM {name}.order_completed").fetchone()[0]
    assert total == pytest.approx(sum(i + 0.5 for i in range(N_EVENTS)))
    assert wait_for(conn, f"SELECT count(*) FROM {name}.identifies", 1) == 1
    email = conn.execute(f"SELECT email FROM {name}.users WHERE user_id = 'user-1'").fetchone()[0]
    assert email == "one@example.com"
    assert wait_for(conn, f"SELECT count(*) FROM {name}.pages", 1) == 1
    assert wait_for(conn, f"SELECT count(*) FROM {name}.groups", 1) == 1
    assert wait_for(conn, f"SELECT count(*) FROM {name}.aliases", 1) == 1
    lib = conn.execute(f"SELECT DISTINCT context_library_name FROM {name}.tracks").fetchall()
    assert len(lib) == 1 and lib[0][0], lib


def test_segment_analytics_python(source):
    from segment.analytics import Client

    name, key, conn = source
    errors = []
    client = Client(key, host=host(), on_error=lambda e, batch: errors.append(e), max_retries=3)
    ids = _send_with(client, errors)
    client.shutdown()
    _check(conn, name, ids)


def test_rudder_sdk_python_gzip(source):
    from rudderstack.analytics import Client

    name, key, conn = source
    errors = []
    # gzip=True is the SDK's default; spelled out because it is what this test is about.
    client = Client(key, host=host(), gzip=True, on_error=lambda e, batch: errors.append(e), max_retries=3)
    ids = _send_with(client, errors)
    client.shutdown()
    _check(conn, name, ids)


NODE_DIR = Path(os.environ.get("TALLY_NODE_DIR", Path(__file__).parent / "node"))


@pytest.mark.skipif(shutil.which("node") is None, reason="needs Node.js")
def test_segment_analytics_node(source):
    name, key, conn = source
    assert (NODE_DIR / "node_modules" / "@segment" / "analytics-node").exists(), (
        "run scripts/clients.sh, which installs @segment/analytics-node"
    )
    out = subprocess.run(
        ["node", str(NODE_DIR / "send.js"), host(), key, str(N_EVENTS)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=NODE_DIR,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["failed"] == 0, report
    ids = report["sent"]
    assert len(ids) == N_EVENTS
    assert wait_for(conn, f"SELECT count(*) FROM {name}.order_completed", N_EVENTS) == N_EVENTS
    stored = {r[0] for r in conn.execute(f"SELECT message_id FROM {name}.order_completed").fetchall()}
    assert set(ids) == stored
    lib = conn.execute(f"SELECT DISTINCT context_library_name FROM {name}.tracks").fetchone()[0]
    assert lib == "@segment/analytics-node"
