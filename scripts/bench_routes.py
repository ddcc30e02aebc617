#!/usr/bin/env python3
"""Real-time routing benchmark (issue 8): end-to-end latency of three routes at 20,000
events/s, ingest throughput with and without routes, and catch-up after an outage of one
destination.

Steps (tally running, TALLY_PORT / TALLY_HTTP_PORT):
  1. generate events with scripts/datagen/gen_customer_data.py (cached in
     /tmp/tally-bench-data/routes-u<N>-s1/events.ndjson); CREATE SOURCE web;
  2. no routes: examples/ingest_load as fast as tally acks for --seconds: events/s (A);
  3. three routes to three local receivers (examples/activation_sink, webhook mode, answering
     at once): every event, Order Completed, identify traits with hashed emails. Each row
     carries `received_ms`, from the event's `received_at` (stamped by tally on receipt,
     just before the durable ack), so the receivers measure receipt -> delivery latency,
     an upper bound of ack -> delivery. ingest_load paced at --rate (20,000 events/s):
     p50/p99 at the receivers, and tally.route_stats' own figures;
  4. the same three routes, ingest as fast as tally acks: events/s (B); B / A is the
     throughput kept with routes;
  5. outage: the third receiver is stopped for --outage seconds while ingest runs paced at
     --rate; the other routes' p99 during it; then the receiver comes back on the same port
     and the backlog is timed until its route has delivered everything: events/s while
     catching up.
Prints a Markdown table.

Usage: TALLY_PORT=... TALLY_HTTP_PORT=... bench_routes.py --sink PATH --load PATH
       [--users 5000] [--rate 20000] [--seconds 20] [--outage 60]
(scripts/bench-routes.sh builds tally and the tools, starts a server and runs this.)
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


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def generate(users: int, out: str) -> None:
    if os.path.exists(os.path.join(out, "manifest.json")):
        log(f"using cached data in {out}")
        return
    os.makedirs(out, exist_ok=True)
    log(f"generating {users} users of events into {out} ...")
    subprocess.run([sys.executable, os.path.join(HERE, "datagen", "gen_customer_data.py"),
                    "--users", str(users), "--seed", "1", "--out", out],
                   check=True, stdout=subprocess.DEVNULL)


class Sink:
    def __init__(self, binary: str, listen: str = "127.0.0.1:0"):
        self.binary = binary
        self.start(listen)

    def start(self, listen: str) -> None:
        self.p = subprocess.Popen([self.binary, "--listen", listen, "--mode", "webhook",
                                   "--delay-ms", "0"], stdout=subprocess.PIPE, text=True)
        line = self.p.stdout.readline().strip() if self.p.stdout else ""
        if not line.startswith("listening "):
            raise SystemExit(f"sink did not start: {line!r}")
        self.addr = line.split(" ", 1)[1]

    def stats(self) -> dict:
        with urllib.request.urlopen(f"http://{self.addr}/stats") as r:
            return json.load(r)

    def reset(self) -> None:
        urllib.request.urlopen(f"http://{self.addr}/reset").read()

    def stop(self) -> None:
        self.p.kill()
        self.p.wait()


def load(binary: str, http_port: int, key: str, events: str, seconds: int, rate: int) -> dict:
    cmd = [binary, "--url", f"http://127.0.0.1:{http_port}", "--key", key, "--events", events,
           "--seconds", str(seconds), "--batch", "100", "--connections", "32"]
    if rate:
        cmd += ["--rate", str(rate)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def wait_until(pred, what: str, limit: float = 600.0) -> float:
    t = time.perf_counter()
    while not pred():
        if time.perf_counter() - t > limit:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sink", required=True)
    ap.add_argument("--load", required=True)
    ap.add_argument("--users", type=int, default=5000)
    ap.add_argument("--rate", type=int, default=20000)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--outage", type=int, default=60)
    args = ap.parse_args()

    data = f"/tmp/tally-bench-data/routes-u{args.users}-s1"
    generate(args.users, data)
    events = os.path.join(data, "events.ndjson")
    http_port = int(os.environ["TALLY_HTTP_PORT"])
    conn = psycopg.connect(host="127.0.0.1", port=int(os.environ["TALLY_PORT"]), user="tally",
                           dbname="tally", autocommit=True)
    cur = conn.cursor()
    cur.execute("CREATE SOURCE web TYPE tracking_api")
    key = cur.execute("SELECT write_key FROM tally.sources WHERE name = 'web'").fetchone()[0]

    log("A: ingest without routes ...")
    a = load(args.load, http_port, key, events, args.seconds, 0)
    log(f"   {a}")

    sinks = [Sink(args.sink) for _ in range(3)]
    received_ms = "CAST(date_part('epoch', received_at) * 1000 AS BIGINT) AS received_ms"
    routes = [
        ("all_events", f"SELECT message_id, user_id, anonymous_id, type, event, {received_ms} FROM events"),
        ("orders", f"SELECT message_id, user_id, json_get_str(properties, 'order_id') AS order_id, "
                   f"json_get_float(properties, 'revenue') AS revenue, {received_ms} FROM events "
                   "WHERE type = 'track' AND event = 'Order Completed'"),
        ("traits", f"SELECT message_id, user_id, hash_email(json_get_str(traits, 'email')) AS email_sha256, "
                   f"json_get_str(traits, 'plan') AS plan, {received_ms} FROM events WHERE type = 'identify'"),
    ]
    for (name, sql), sink in zip(routes, sinks):
        cur.execute(f"CREATE DESTINATION {name}_hook TYPE webhook WITH (url = 'http://{sink.addr}/hook', batch_size = 500)")
        cur.execute(f"CREATE ROUTE {name} FROM SOURCE web TO DESTINATION {name}_hook AS {sql}")

    def delivered(route: str) -> tuple[int, int]:
        r = cur.execute("SELECT delivered, filtered FROM tally.route_stats WHERE route = %s", (route,)).fetchone()
        return int(r[0] or 0), int(r[1] or 0)

    def caught_up(route: str) -> bool:
        r = cur.execute("SELECT lag_events, pending FROM tally.route_stats WHERE route = %s", (route,)).fetchone()
        return int(r[0] or 0) == 0 and int(r[1] or 0) == 0

    def settled() -> bool:
        return all(caught_up(n) for n, _ in routes)

    log(f"B: three routes, paced at {args.rate} events/s ...")
    b = load(args.load, http_port, key, events, args.seconds, args.rate)
    wait_until(settled, "routes to deliver the paced run")
    lat = [s.stats() for s in sinks]
    stats = cur.execute("SELECT route, latency_p50_ms, latency_p99_ms FROM tally.route_stats ORDER BY route").fetchall()
    log(f"   load {b}; receivers {lat}; route_stats {stats}")

    log("C: three routes, ingest as fast as tally acks ...")
    c = load(args.load, http_port, key, events, args.seconds, 0)
    log(f"   {c}")
    wait_until(settled, "routes to deliver the unpaced run")

    log(f"D: receiver of 'traits' down for {args.outage} s at {args.rate} events/s ...")
    for s in sinks:
        s.reset()
    down = sinks[2]
    addr = down.addr
    down.stop()
    load(args.load, http_port, key, events, args.outage, args.rate)
    during = [s.stats() for s in sinks[:2]]
    backlog_from = sum(delivered("traits"))
    down.start(addr)
    catch_up = wait_until(lambda: caught_up("traits"), "the traits route to catch up", 3600)
    # Events the route passed (delivered or filtered) while catching up.
    caught = sum(delivered("traits")) - backlog_from
    log(f"   during {during}; caught up {caught} events in {catch_up:.1f} s")

    for s in sinks:
        s.stop()
    rows = [
        ("ingest, no routes", f"{a['events_per_s']:,.0f} events/s", f"ack p99 {a['p99_ms']:.1f} ms", ""),
        (f"3 routes, paced {args.rate:,}/s: receipt -> delivery (receivers; route_stats)",
         ", ".join(f"{n}: p50 {l['latency_p50_ms']} / p99 {l['latency_p99_ms']} ms" for (n, _), l in zip(routes, lat)),
         ", ".join(f"{r[0]}: p50 {r[1]} / p99 {r[2]} ms" for r in stats), "goal p99 < 500 ms"),
        ("ingest, 3 routes", f"{c['events_per_s']:,.0f} events/s",
         f"{c['events_per_s'] / a['events_per_s']:.2f}x of no routes", "goal >= 0.8x"),
        (f"outage of one receiver for {args.outage} s", f"catch-up {caught / catch_up:,.0f} events/s",
         ", ".join(f"{n} p99 {l['latency_p99_ms']} ms" for (n, _), l in zip(routes[:2], during)),
         "other routes' p99 during the outage"),
    ]
    print("| run | measured | detail | goal |")
    print("|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
