#!/usr/bin/env python3
"""Enrichment benchmark (issue 4): how close `enrich` gets to the rate a connection allows.

A lookup API runs in this process (a threaded HTTP server): `POST /lookup` with
`{"keys": [...]}` answers, after sleeping --latency-ms (default 20), a JSON object with one
member per key (and `{"key": ...}` the key's value, for one key per request). tally (running, TALLY_PORT) gets a table of distinct keys and, per scenario,
a connection to the API, then runs `SELECT count(enrich(conn, key, 'v')) FROM keys_N` and
times it through psycopg. Each scenario reports keys/s, the ceiling its settings allow
(rate_limit x batch_size for rate-limited ones; concurrency x batch_size / latency for the
unlimited one) and the ratio; the issue's goal is within 10% of the rate-limit ceiling.
The API counts requests and keys, and the script checks every key was answered once.

Usage: TALLY_PORT=5433 bench_enrich.py [--latency-ms 20]
(scripts/bench-enrich.sh builds tally, starts a server and runs this.)
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import sys
import threading
import time

import psycopg


class Api:
    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.requests = 0
        self.keys = 0
        self.lock = threading.Lock()

    def serve(self) -> int:
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802
                n = int(self.headers.get("content-length", "0"))
                body = json.loads(self.rfile.read(n))
                single = "key" in body
                keys = [body["key"]] if single else body.get("keys", [])
                time.sleep(api.latency)
                answer = {"v": len(keys[0])} if single else {k: {"v": len(k)} for k in keys}
                out = json.dumps(answer).encode()
                with api.lock:
                    api.requests += 1
                    api.keys += len(keys)
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args: object) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server.server_address[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--latency-ms", type=float, default=20.0)
    args = ap.parse_args()
    latency = args.latency_ms / 1000
    api = Api(latency)
    port = api.serve()
    conn = psycopg.connect(
        host="127.0.0.1", port=int(os.environ["TALLY_PORT"]), user="tally", dbname="tally",
        autocommit=True,
    )
    # name, keys, batch_size, concurrency, rate_limit (req/s or None)
    scenarios = [
        ("batch 100, 20 req/s", 40_000, 100, 4, 20.0),
        ("batch 100, 50 req/s", 100_000, 100, 4, 50.0),
        ("single key, 100 req/s", 2_000, 1, 8, 100.0),
        ("batch 100, unlimited, 8 in flight", 200_000, 100, 8, None),
    ]
    rows = []
    for i, (name, n, batch, conc, rate) in enumerate(scenarios):
        table = f"keys_{n}"
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {table} AS "
            f"SELECT 'key-' || v AS key FROM generate_series(1, {n}) AS t(v)"
        )
        limit = f", rate_limit = {rate}" if rate else ""
        # One key per request: POST {"key": ...}, answered with the key's value.
        limit += ", method = 'POST'" if batch == 1 else ""
        conn.execute(
            f"CREATE CONNECTION c{i} TYPE http WITH (url = 'http://127.0.0.1:{port}/lookup', "
            f"batch_size = {batch}, concurrency = {conc}{limit}, allow_private = 'true')"
        )
        before_req, before_keys = api.requests, api.keys
        t0 = time.perf_counter()
        answered = conn.execute(f"SELECT count(enrich('c{i}', key, 'v')) FROM {table}").fetchone()[0]
        elapsed = time.perf_counter() - t0
        reqs, keys = api.requests - before_req, api.keys - before_keys
        assert answered == n, f"{name}: {answered} of {n} keys answered"
        assert keys == n, f"{name}: the API saw {keys} keys for {n}"
        ceiling = rate * batch if rate else conc * batch / latency
        kps = n / elapsed
        rows.append((name, n, reqs, elapsed, kps, ceiling, kps / ceiling))
        print(f"{name}: {n} keys in {elapsed:.2f} s, {kps:,.0f} keys/s", file=sys.stderr)
    print("| scenario | keys | requests | seconds | keys/s | ceiling keys/s | of ceiling |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, n, reqs, elapsed, kps, ceiling, ratio in rows:
        print(f"| {name} | {n:,} | {reqs:,} | {elapsed:.2f} | {kps:,.0f} | {ceiling:,.0f} | {ratio:.3f} |")


if __name__ == "__main__":
    main()
