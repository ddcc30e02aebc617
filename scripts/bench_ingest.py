#!/usr/bin/env python3
"""Ingest benchmark driver, run by scripts/bench-ingest.sh inside with-release-tally.sh.

1. Sustained ingest: the Rust load generator (examples/ingest_load.rs) against tally's
   /v1/batch and, in the same run, against the PostgreSQL stand-in of RudderStack's gateway
   (examples/pg_ingest_standin.rs). Prints events/s and ack latency p50/p99 for both.
2. Ack to queryable: single events sent one at a time while tally is otherwise idle; each is
   polled for over the PostgreSQL protocol until it is in the table. Prints p50/p99.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
import base64

import psycopg


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def loadgen(url: str, key: str) -> dict:
    out = subprocess.run(
        [os.environ["LOADGEN"], "--url", url, "--key", key, "--events", os.environ["EVENTS"],
         "--batch", "100", "--connections", os.environ["CONNS"], "--seconds", os.environ["SECONDS_RUN"]],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    pg_port = int(os.environ["TALLY_PORT"])
    http_port = int(os.environ["TALLY_HTTP_PORT"])
    conn = psycopg.connect(f"host=127.0.0.1 port={pg_port} dbname=tally user=tally", autocommit=True)
    conn.execute("CREATE SOURCE bench TYPE tracking_api")
    key = conn.execute("SELECT write_key FROM tally.sources WHERE name = 'bench'").fetchone()[0]

    print("== sustained ingest, 100-message batches,", os.environ["CONNS"], "connections,", os.environ["SECONDS_RUN"], "s")
    tally = loadgen(f"http://127.0.0.1:{http_port}", key)
    print("tally      ", json.dumps(tally))

    standin_port = free_port()
    standin = subprocess.Popen(
        [os.environ["STANDIN"], "--listen", f"127.0.0.1:{standin_port}",
         "--pg", "host=127.0.0.1 user=postgres dbname=test", "--writers", "4"],
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{standin_port}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        pg = loadgen(f"http://127.0.0.1:{standin_port}", "standin")
        print("pg standin ", json.dumps(pg))
    finally:
        standin.terminate()
        standin.wait()
    print(f"ratio tally/standin events/s: {tally['events_per_s'] / pg['events_per_s']:.2f}x")

    # Let the flusher drain the backlog of the sustained run before measuring freshness.
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/health") as r:
            if json.load(r)["collect"]["wal_pending_events"] == 0:
                break
        time.sleep(0.5)
    print("== ack to queryable (default flush settings), 50 single events")
    auth = "Basic " + base64.b64encode(f"{key}:".encode()).decode()
    lags = []
    for i in range(50):
        mid = str(uuid.uuid4())
        body = json.dumps({"userId": "fresh", "event": "Freshness Probe", "messageId": mid}).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{http_port}/v1/track", data=body,
            headers={"Authorization": auth, "Content-Type": "application/json"},
        )
        urllib.request.urlopen(req).read()
        acked = time.monotonic()
        while True:
            try:
                n = conn.execute("SELECT count(*) FROM bench.freshness_probe WHERE message_id = %s", (mid,)).fetchone()[0]
            except psycopg.errors.UndefinedTable:
                n = 0
            if n:
                break
            time.sleep(0.01)
        lags.append(time.monotonic() - acked)
        time.sleep(0.05 * (i % 7))
    lags.sort()
    print(f"ack→queryable p50 {statistics.median(lags) * 1000:.0f} ms, p99 {lags[int(len(lags) * 0.99) - 1] * 1000:.0f} ms, max {lags[-1] * 1000:.0f} ms")


if __name__ == "__main__":
    sys.exit(main())
