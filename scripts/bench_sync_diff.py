#!/usr/bin/env python3
"""Sync diff benchmark (issue 6): time to compute the change set of a sync run over a model
with 1% changed rows, tally's streamed diff against DuckDB's anti-join of two equivalent
snapshots, same machine, same run.

Steps:
  1. a local webhook sink (this process, a thread) that answers 200 and counts the rows and
     removal keys it receives;
  2. tally (running, TALLY_PORT): CREATE TABLE bench_model AS ... FROM generate_series(1, N)
     (id, email, plan, score), a webhook destination to the sink and
     CREATE SYNC bench_sync AS COPY (SELECT * FROM bench_model) TO DESTINATION ...
     WITH (mode = 'mirror', key = 'id', batch_size = 10000);
  3. RUN SYNC once (every row is new: this builds the snapshot), change --changed-pct of the
     rows (UPDATE ... WHERE id % k = 0) and remove a few (DELETE, so the removal side of the
     diff is exercised too), RUN SYNC again and read the second run's `diff_ms`: the time
     spent computing the change set (reading the model, hashing every row, the hash join
     against the snapshot and sorting its batches out; not sending and not writing the new
     snapshot), also kept in tally.sync_runs.diff_ms;
  4. DuckDB (in this process): two snapshot tables of N rows (row_key BIGINT, row_hash
     BIGINT), the second with the same changed and removed keys, built untimed; then timed:
     the change set as `new ANTI JOIN old ON (key, hash)` plus `old ANTI JOIN new ON key`;
  5. print a Markdown table with both times and the ratio (the issue's goal: at most 0.5).

DuckDB's side starts from two ready snapshots of keys and hashes; tally's diff starts from
the model's rows (it hashes them as part of the measured time), which is what a sync does.

Usage: TALLY_PORT=5433 bench_sync_diff.py [--rows 10000000] [--changed-pct 1]
(scripts/bench-sync-diff.sh builds tally, starts a server and runs this.)
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import sys
import threading
import time


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Sink:
    """A webhook receiver: counts rows and removal keys, answers 200."""

    def __init__(self) -> None:
        self.rows = 0
        self.removed = 0
        self.requests = 0
        self.lock = threading.Lock()
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                # Row bodies are counted without parsing them (the rows are flat objects,
                # one '{' each besides the body's own), so a 10M-row first run is not held
                # back by the driver; removal bodies are small and parsed.
                if b'"op":"delete"' in body:
                    removed, rows = len(json.loads(body).get("keys", [])), 0
                else:
                    removed, rows = 0, body.count(b"{") - 1
                with sink.lock:
                    sink.requests += 1
                    sink.removed += removed
                    sink.rows += rows
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def take(self) -> tuple[int, int]:
        with self.lock:
            out = (self.rows, self.removed)
            self.rows = self.removed = 0
            return out


def run_sync(cur, name: str) -> dict:
    t0 = time.perf_counter()
    cur.execute(f"RUN SYNC {name}")
    cols = [d.name for d in cur.description]
    row = dict(zip(cols, cur.fetchone()))
    row["seconds"] = time.perf_counter() - t0
    return row


def run_tally(port: int, rows: int, every: int, removed: int, batch: int) -> dict:
    import psycopg

    sink = Sink()
    conn = psycopg.connect(host="127.0.0.1", port=port, user="tally", dbname="tally",
                           autocommit=True)
    cur = conn.cursor()
    log(f"tally: building a {rows}-row model ...")
    t0 = time.perf_counter()
    cur.execute(
        "CREATE TABLE bench_model AS SELECT CAST(value AS bigint) AS id, "
        "concat('user', value, '@example.com') AS email, "
        "CASE WHEN value % 3 = 0 THEN 'pro' ELSE 'free' END AS plan, "
        f"CAST(value % 1000 AS bigint) AS score FROM generate_series(1, {rows})"
    )
    t_model = time.perf_counter() - t0
    cur.execute(
        f"CREATE DESTINATION bench_sink TYPE webhook WITH (url = 'http://127.0.0.1:{sink.port}/')"
    )
    cur.execute(
        "CREATE SYNC bench_sync AS COPY (SELECT * FROM bench_model) TO DESTINATION bench_sink "
        f"WITH (mode = 'mirror', key = 'id', batch_size = {batch})"
    )
    log("tally: first run (every row is new) ...")
    first = run_sync(cur, "bench_sync")
    sent1, _ = sink.take()
    log(f"tally: first run {first['seconds']:.1f} s, {sent1} rows at the sink")
    cur.execute(f"UPDATE bench_model SET score = score + 1 WHERE id % {every} = 0")
    if removed:
        cur.execute(f"DELETE FROM bench_model WHERE id > {rows - removed}")
    log("tally: second run ...")
    second = run_sync(cur, "bench_sync")
    sent2, removed2 = sink.take()
    cur.execute(
        "SELECT diff_ms FROM tally.sync_runs WHERE sync = 'bench_sync' ORDER BY started_at"
    )
    diffs = [r[0] for r in cur.fetchall()]
    conn.close()
    sink.server.shutdown()
    return {
        "model_s": t_model,
        "first": first,
        "second": second,
        "sent_second": sent2,
        "removed_second": removed2,
        "diff_ms_runs": diffs,
    }


def run_duckdb(rows: int, every: int, removed: int) -> dict:
    import duckdb

    con = duckdb.connect()
    log(f"duckdb: building two {rows}-row snapshots (untimed) ...")
    con.execute(
        "CREATE TABLE old AS SELECT range AS row_key, CAST(hash(range) >> 1 AS BIGINT) AS row_hash "
        f"FROM range(1, {rows + 1})"
    )
    con.execute(
        "CREATE TABLE new AS SELECT row_key, CASE WHEN row_key % "
        f"{every} = 0 THEN row_hash + 1 ELSE row_hash END AS row_hash FROM old "
        f"WHERE row_key <= {rows - removed}"
    )
    t0 = time.perf_counter()
    (changed,) = con.execute(
        "SELECT count(*) FROM new ANTI JOIN old "
        "ON new.row_key = old.row_key AND new.row_hash = old.row_hash"
    ).fetchone()
    t_changed = time.perf_counter() - t0
    t1 = time.perf_counter()
    (gone,) = con.execute(
        "SELECT count(*) FROM old ANTI JOIN new ON old.row_key = new.row_key"
    ).fetchone()
    t_gone = time.perf_counter() - t1
    return {
        "changed": changed,
        "removed": gone,
        "changed_s": t_changed,
        "removed_s": t_gone,
        "seconds": t_changed + t_gone,
        "threads": con.execute("SELECT current_setting('threads')").fetchone()[0],
        "version": duckdb.__version__,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--changed-pct", type=float, default=1.0,
                    help="percentage of rows changed between the runs (default 1)")
    ap.add_argument("--removed", type=int, default=None,
                    help="rows deleted between the runs (default: 0.1%% of the rows)")
    ap.add_argument("--batch-size", type=int, default=10_000)
    ap.add_argument("--skip", choices=["duckdb"], action="append", default=[])
    args = ap.parse_args()
    port = int(os.environ.get("TALLY_PORT", "5433"))
    every = max(1, round(100 / args.changed_pct))
    removed = args.removed if args.removed is not None else args.rows // 1000
    changed_expected = (args.rows - removed) // every

    t = run_tally(port, args.rows, every, removed, args.batch_size)
    second = t["second"]
    ok = (int(second["changed"]) == changed_expected and int(second["added"]) == 0
          and int(second["left_query"]) == removed and t["sent_second"] == changed_expected
          and t["removed_second"] == removed)
    d = None if "duckdb" in args.skip else run_duckdb(args.rows, every, removed)
    if d is not None:
        ok = ok and d["changed"] == changed_expected and d["removed"] == removed

    diff_s = int(second["diff_ms"]) / 1000
    print(f"\n### Sync diff: {args.rows:,} rows, {changed_expected:,} changed "
          f"(1 in {every}), {removed:,} removed\n")
    print("| | seconds |")
    print("|---|---:|")
    print(f"| tally: model build (CREATE TABLE AS) | {t['model_s']:.2f} |")
    print(f"| tally: first run (all rows sent, snapshot built) | {t['first']['seconds']:.2f} |")
    print(f"| tally: second run, total (diff, send, remove, snapshot) | {second['seconds']:.2f} |")
    print(f"| **tally: second run, diff (change set)** | **{diff_s:.3f}** |")
    if d is not None:
        print(f"| DuckDB {d['version']} ({d['threads']} threads): anti-join, added+changed "
              f"| {d['changed_s']:.3f} |")
        print(f"| DuckDB: anti-join, removed | {d['removed_s']:.3f} |")
        print(f"| **DuckDB: change set** | **{d['seconds']:.3f}** |")
        ratio = diff_s / d["seconds"] if d["seconds"] > 0 else float("inf")
        print(f"\ntally diff / DuckDB anti-join: **{ratio:.2f}x** (goal: at most 0.5x)")
    print(f"\nchange sets agree with the expected counts: {'yes' if ok else 'NO'} "
          f"(tally: changed {second['changed']}, added {second['added']}, "
          f"left the query {second['left_query']}, removed {second['removed']}; "
          f"sink got {t['sent_second']} rows and {t['removed_second']} removals)")
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
