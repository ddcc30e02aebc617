#!/usr/bin/env python3
"""Activation delivery benchmark (issue 6): throughput of COPY ... TO DESTINATION to a local
webhook answering in 5 ms, and the rate reached against a mock with HubSpot's documented
limit (190 requests per rolling 10 s, 100 records per request).

Steps:
  1. generate identity edges with scripts/datagen/gen_customer_data.py --edges-only (cached
     in /tmp/tally-bench-data/activation-u<N>-s1/), load identity_edges.csv into a tally
     table `edges` (the rows to deliver: 5 columns, ~90 bytes of JSON each);
  2. start examples/activation_sink (release) in webhook mode, answering each request after
     5 ms; time `COPY (SELECT * FROM edges LIMIT n) TO DESTINATION hook WITH (batch_size =
     1000)`, rows/s = rows / wall time of the statement; the sink's own count checks that
     every row arrived;
  3. start the sink in HubSpot mode; COPY enough rows for `--hubspot-seconds` of the allowed
     rate (19 requests/s x 100 records) to a hubspot destination at the sink with its default
     settings; report accepted requests / wall time against the allowed 19/s, and the 429s
     after the first 10 s (warm-up).
Prints a Markdown table.

Usage: TALLY_PORT=5433 bench_activation.py [--users 150000] [--rows 1000000]
(scripts/bench-activation.sh builds tally and the sink, starts a server and runs this.)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request

import psycopg

HERE = os.path.dirname(os.path.abspath(__file__))
HUBSPOT_RATE = 19.0  # 190 requests per 10 s


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def generate(users: int, out: str) -> None:
    if os.path.exists(os.path.join(out, "manifest.json")):
        log(f"using cached data in {out}")
        return
    os.makedirs(out, exist_ok=True)
    log(f"generating {users} users of identity edges into {out} ...")
    subprocess.run([sys.executable, os.path.join(HERE, "datagen", "gen_customer_data.py"),
                    "--users", str(users), "--seed", "1", "--edges-only", "--out", out],
                   check=True, stdout=subprocess.DEVNULL)


def start_sink(binary: str, mode: str, delay_ms: int) -> tuple[subprocess.Popen, str]:
    p = subprocess.Popen([binary, "--listen", "127.0.0.1:0", "--mode", mode,
                          "--delay-ms", str(delay_ms)], stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline().strip() if p.stdout else ""
    if not line.startswith("listening "):
        p.kill()
        raise SystemExit(f"sink did not start: {line!r}")
    return p, line.split(" ", 1)[1]


def stats(addr: str) -> dict:
    with urllib.request.urlopen(f"http://{addr}/stats") as r:
        return json.load(r)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=150000)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--hubspot-seconds", type=int, default=60)
    ap.add_argument("--hubspot-rate-limit", type=float, default=None,
                    help="the destination's rate_limit option (default: the type's own ceiling)")
    ap.add_argument("--sink", required=True, help="path of the release activation_sink binary")
    args = ap.parse_args()

    data = f"/tmp/tally-bench-data/activation-u{args.users}-s1"
    generate(args.users, data)
    conn = psycopg.connect(host="127.0.0.1", port=int(os.environ["TALLY_PORT"]), user="tally",
                           dbname="tally", autocommit=True)
    cur = conn.cursor()
    csv = os.path.join(data, "identity_edges.csv")
    cur.execute(f"CREATE EXTERNAL TABLE edges_csv STORED AS CSV LOCATION '{csv}' "
                "OPTIONS ('format.has_header' 'true')")
    cur.execute("CREATE TABLE edges AS SELECT * FROM edges_csv")
    total = cur.execute("SELECT count(*) FROM edges").fetchone()[0]
    rows = min(args.rows, total)
    log(f"{total} edges loaded; delivering {rows}")
    results = []

    # Webhook throughput.
    sink, addr = start_sink(args.sink, "webhook", 5)
    try:
        cur.execute(f"CREATE DESTINATION hook TYPE webhook WITH (url = 'http://{addr}/hook', "
                    "batch_size = 1000)")
        t = time.perf_counter()
        cur.execute(f"COPY (SELECT * FROM edges LIMIT {rows}) TO DESTINATION hook "
                    "WITH (mode = 'insert')")
        elapsed = time.perf_counter() - t
        answer = cur.fetchall()
        s = stats(addr)
        if s["rows"] != rows:
            raise SystemExit(f"webhook received {s['rows']} rows, expected {rows}: {answer}")
        results.append(("webhook, 1,000-row batches, 5 ms answers", f"{rows:,} rows in {elapsed:.2f} s",
                        f"{rows / elapsed:,.0f} rows/s", f"{rows / elapsed / 200_000:.2f}x of 200,000 rows/s"))
    finally:
        sink.kill()

    # HubSpot rate.
    sink, addr = start_sink(args.sink, "hubspot", 0)
    try:
        n = min(total, int(HUBSPOT_RATE * 100 * args.hubspot_seconds))
        limit = f", rate_limit = {args.hubspot_rate_limit}" if args.hubspot_rate_limit else ""
        cur.execute(f"CREATE DESTINATION crm TYPE hubspot WITH (token = 'bench', base_url = 'http://{addr}', "
                    f"concurrency = 1{limit})")
        t = time.perf_counter()
        cur.execute(f"COPY (SELECT left_value AS email, left_type, right_type, right_value FROM edges "
                    f"LIMIT {n}) TO DESTINATION crm WITH (mode = 'upsert', key = 'email')")
        elapsed = time.perf_counter() - t
        s = stats(addr)
        # Over a whole COPY the rolling window allows 19 requests/s on average (a burst of
        # 190 at the start, then 19/s), so requests / wall time is the rate reached.
        rate = s["requests"] / elapsed
        results.append(("hubspot mock, 190 req / 10 s, 100 records", f"{s['requests']:,} requests in {elapsed:.1f} s",
                        f"{rate:.2f} req/s ({s['throttled']} x 429, {s['throttled_after_warmup']} after the first 10 s)",
                        f"{rate / HUBSPOT_RATE:.3f}x of the allowed 19 req/s"))
    finally:
        sink.kill()

    print("| run | volume | measured | vs goal |")
    print("|---|---|---:|---:|")
    for r in results:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
