#!/usr/bin/env python3
"""Analytic-queries benchmark: tally against DuckDB, same data, same run, answers compared.

Runs the cohort queries in /work/shared/bench/queries/*.sql (PostgreSQL syntax, one table
`events`, see /work/shared/bench/README.md) on DuckDB (in-process, in-memory table) and on a
running tally server (PostgreSQL wire protocol, psycopg), best of --repeat runs each, and prints
a Markdown table: per-query times, the tally/DuckDB time ratio (lower is better) and whether
both engines gave the same answer.

Steps:
  1. generate the tracking data with gen_customer_data.py --users N --seed S (cached in
     /tmp/tally-bench-data/users<N>/ unless --data-dir is given; reused when present);
  2. flatten events.ndjson into one Parquet file events.parquet with DuckDB (cached too);
  3. DuckDB: CREATE TABLE events AS SELECT * FROM 'events.parquet' (in memory), time queries;
  4. tally: CREATE EXTERNAL TABLE events_src STORED AS PARQUET LOCATION '<parquet>' and
     CREATE TABLE events AS SELECT * FROM events_src (a Delta table), time queries;
  5. compare answers (floats rounded to 2 decimals, order-insensitive unless the query has a
     top-level ORDER BY) and print the table.

Usage: TALLY_PORT=5433 bench_queries.py [--users 20000] [--seed 7] [--repeat 3]
(scripts/bench-queries.sh builds tally, starts a server and runs this.)
"""

from __future__ import annotations

import argparse
import datetime as dt
import decimal
import glob
import os
import re
import shutil
import subprocess
import sys
import threading
import time

SHARED = os.environ.get("TALLY_SHARED", "/work/shared")

FLATTEN_SQL = """
COPY (
    SELECT
        json ->> '$.messageId'                 AS message_id,
        json ->> '$.type'                      AS type,
        json ->> '$.event'                     AS event,
        json ->> '$.anonymousId'               AS anonymous_id,
        json ->> '$.userId'                    AS user_id,
        json ->> '$.previousId'                AS previous_id,
        json ->> '$.groupId'                   AS group_id,
        TRY_CAST(json ->> '$.timestamp'  AS TIMESTAMPTZ) AT TIME ZONE 'UTC' AS ts,
        TRY_CAST(json ->> '$.sentAt'     AS TIMESTAMPTZ) AT TIME ZONE 'UTC' AS sent_at,
        TRY_CAST(json ->> '$.receivedAt' AS TIMESTAMPTZ) AT TIME ZONE 'UTC' AS received_at,
        json ->> '$.properties.product_id'     AS product_id,
        json ->> '$.properties.currency'       AS currency,
        TRY_CAST(json ->> '$.properties.price'   AS DOUBLE) AS price,
        TRY_CAST(json ->> '$.properties.revenue' AS DOUBLE) AS revenue,
        json ->> '$.traits.email'              AS email,
        json ->> '$.traits.plan'               AS plan,
        json ->> '$.context.device.id'         AS device_id,
        json ->> '$.context.ip'                AS ip,
        json ->> '$.context.userAgent'         AS user_agent,
        json ->> '$.context.library.name'      AS library,
        json ->> '$.context.page.url'          AS page_url,
        CAST(json -> '$.properties' AS VARCHAR) AS properties,
        CAST(json -> '$.traits' AS VARCHAR)     AS traits
    FROM read_ndjson_objects('{src}', maximum_object_size = 67108864)
) TO '{dst}' (FORMAT PARQUET, COMPRESSION ZSTD)
"""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


# ---------------------------------------------------------------------------- data


def ensure_data(args) -> tuple[str, str]:
    """Return (events.ndjson, events.parquet), generating/flattening what is missing."""
    import duckdb

    d = os.path.abspath(args.data_dir or f"/tmp/tally-bench-data/users{args.users}")
    ndjson = os.path.join(d, "events.ndjson")
    parquet = os.path.join(d, "events.parquet")
    if not os.path.exists(ndjson):
        tmp = d + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        log(f"generating data: --users {args.users} --seed {args.seed} -> {d}")
        t = time.perf_counter()
        subprocess.run(
            [sys.executable, args.datagen, "--users", str(args.users), "--seed", str(args.seed), "--out", tmp],
            check=True,
        )
        log(f"  generated in {time.perf_counter() - t:.1f}s")
        if os.path.isdir(d):  # a folder without events.ndjson: keep nothing stale in it
            shutil.rmtree(d)
        os.rename(tmp, d)
    if not os.path.exists(parquet) or os.path.getmtime(parquet) < os.path.getmtime(ndjson):
        log(f"flattening {ndjson} -> {parquet}")
        t = time.perf_counter()
        tmp = parquet + ".tmp"
        con = duckdb.connect()
        con.execute("SET TimeZone = 'UTC'")
        con.execute("SET enable_progress_bar = false")
        con.execute(FLATTEN_SQL.format(src=ndjson.replace("'", "''"), dst=tmp.replace("'", "''")))
        con.close()
        os.replace(tmp, parquet)
        log(f"  flattened in {time.perf_counter() - t:.1f}s")
    return ndjson, parquet


# ---------------------------------------------------------------------------- answers


def norm_value(v):
    if v is None:
        return None
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float, decimal.Decimal)):
        f = round(float(v), 2)
        return int(f) if f.is_integer() else f  # 332, 332.0 and Decimal('332') all compare as 332
    if isinstance(v, dt.datetime):
        if v.tzinfo is not None:
            v = v.astimezone(dt.timezone.utc).replace(tzinfo=None)
        return v.isoformat(sep=" ")
    if isinstance(v, dt.date):
        return dt.datetime(v.year, v.month, v.day).isoformat(sep=" ")
    return str(v)


def norm_rows(rows) -> list[tuple]:
    return [tuple(norm_value(v) for v in r) for r in rows]


def sort_key(row: tuple):
    return tuple((v is None, str(type(v)), v if v is not None else 0) for v in row)


def has_top_level_order_by(sql: str) -> bool:
    sql = re.sub(r"--[^\n]*", " ", sql)
    sql = re.sub(r"/\*.*?\*/", " ", sql, flags=re.S)
    sql = re.sub(r"'(?:[^']|'')*'", "''", sql)
    depth, flat = 0, []
    for ch in sql:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif depth == 0:
            flat.append(ch)
    return re.search(r"\border\s+by\b", "".join(flat), re.I) is not None


def fmt_row(r: tuple) -> str:
    return "(" + ", ".join("NULL" if v is None else str(v) for v in r) + ")"


def compare(sql: str, a: list[tuple], b: list[tuple]) -> tuple[bool, str]:
    """a = DuckDB, b = tally (normalised rows). Returns (same, short diff)."""
    ordered = has_top_level_order_by(sql)
    if a == b:
        return True, ""
    sa, sb = sorted(a, key=sort_key), sorted(b, key=sort_key)
    if sa == sb:
        if ordered:
            return False, "same rows, different order"
        return True, ""
    parts = []
    if len(a) != len(b):
        parts.append(f"rows: DuckDB {len(a)} vs tally {len(b)}")
    if ordered:
        pairs = [(i, x, y) for i, (x, y) in enumerate(zip(a, b)) if x != y]
    else:
        pairs = [(i, x, y) for i, (x, y) in enumerate(zip(sa, sb)) if x != y]
    for i, x, y in pairs[:2]:
        parts.append(f"row {i + 1}: DuckDB {fmt_row(x)} vs tally {fmt_row(y)}")
    if len(pairs) > 2:
        parts.append(f"+{len(pairs) - 2} more differing rows")
    if not pairs and len(a) != len(b):
        extra = (sa if len(a) > len(b) else sb)[min(len(a), len(b)):]
        parts.append(("only DuckDB: " if len(a) > len(b) else "only tally: ") + fmt_row(extra[0]))
    return False, "; ".join(parts)


# ---------------------------------------------------------------------------- engines


def run_duckdb(parquet: str, queries: list[tuple[str, str]], repeat: int, threads: int | None):
    import duckdb

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET enable_progress_bar = false")
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    t = time.perf_counter()
    con.execute(f"CREATE TABLE events AS SELECT * FROM read_parquet({sql_str(parquet)})")
    load = time.perf_counter() - t
    rows = con.execute("SELECT count(*) FROM events").fetchone()[0]
    log(f"DuckDB {duckdb.__version__}: loaded {rows} rows in {load:.2f}s")
    out = {}
    for name, sql in queries:
        best, result, err = None, None, None
        for _ in range(repeat):
            try:
                t = time.perf_counter()
                result = con.execute(sql).fetchall()
                el = time.perf_counter() - t
            except Exception as e:  # noqa: BLE001 - report and go on
                err = f"{type(e).__name__}: {e}".strip()
                break
            best = el if best is None else min(best, el)
        out[name] = (best, result, err)
        log(f"  DuckDB {name}: " + (f"{best:.3f}s, {len(result)} rows" if err is None else f"ERROR {err}"))
    con.close()
    return rows, load, out


def tally_exec(conn, sql: str, timeout: float | None):
    """Execute one statement and fetch all rows; cancel it client-side after `timeout` seconds."""
    timer = None
    if timeout:
        timer = threading.Timer(timeout, conn.cancel)
        timer.daemon = True
        timer.start()
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall() if cur.description is not None else []
    finally:
        if timer:
            timer.cancel()


def run_tally(args, parquet: str, queries: list[tuple[str, str]]):
    import psycopg

    conn = psycopg.connect(
        host=args.tally_host, port=args.tally_port, dbname=args.tally_db, user=args.tally_user,
        autocommit=True, connect_timeout=10,
    )
    for stmt in ("DROP TABLE IF EXISTS events", "DROP TABLE IF EXISTS events_src"):
        tally_exec(conn, stmt, None)
    t = time.perf_counter()
    tally_exec(conn, f"CREATE EXTERNAL TABLE events_src STORED AS PARQUET LOCATION {sql_str(parquet)}", None)
    tally_exec(conn, "CREATE TABLE events AS SELECT * FROM events_src", None)
    load = time.perf_counter() - t
    rows = tally_exec(conn, "SELECT count(*) FROM events", None)[0][0]
    log(f"tally: loaded {rows} rows in {load:.2f}s")
    out = {}
    for name, sql in queries:
        best, result, err = None, None, None
        for _ in range(args.repeat):
            try:
                t = time.perf_counter()
                result = tally_exec(conn, sql, args.timeout)
                el = time.perf_counter() - t
            except psycopg.Error as e:
                msg = (getattr(e.diag, "message_primary", None) or str(e)).strip()
                code = getattr(e, "sqlstate", None)
                err = f"{code + ': ' if code else ''}{msg}"
                if conn.closed:
                    conn = psycopg.connect(
                        host=args.tally_host, port=args.tally_port, dbname=args.tally_db,
                        user=args.tally_user, autocommit=True, connect_timeout=10,
                    )
                break
            best = el if best is None else min(best, el)
            if args.timeout and el > args.timeout / 2:
                break  # slow enough: another run would not fit either, keep this one
        out[name] = (best, result, err)
        log(f"  tally {name}: " + (f"{best:.3f}s, {len(result)} rows" if err is None else f"ERROR {err}"))
    conn.close()
    return rows, load, out


# ---------------------------------------------------------------------------- main


def cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=20000, help="gen_customer_data.py --users (default 20000)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--data-dir", help="cache folder (default /tmp/tally-bench-data/users<N>)")
    ap.add_argument("--datagen", default=os.path.join(SHARED, "datagen", "gen_customer_data.py"))
    ap.add_argument("--queries", default=os.path.join(SHARED, "bench", "queries"), help="folder of *.sql")
    ap.add_argument("--repeat", type=int, default=3, help="runs per query, best is reported (default 3)")
    ap.add_argument("--timeout", type=float, default=None, help="client-side cancel of a tally query after S seconds")
    ap.add_argument("--duckdb-threads", type=int, default=None, help="DuckDB threads (default: DuckDB's own)")
    ap.add_argument("--show-answers", action="store_true", help="also print both engines' answers (first rows)")
    ap.add_argument("--tally-host", default="127.0.0.1")
    ap.add_argument("--tally-port", type=int, default=int(os.environ.get("TALLY_PORT", "0")) or None)
    ap.add_argument("--tally-db", default="tally")
    ap.add_argument("--tally-user", default="tally")
    args = ap.parse_args()
    if not args.tally_port:
        ap.error("set TALLY_PORT or --tally-port")

    files = sorted(glob.glob(os.path.join(args.queries, "*.sql")))
    if not files:
        ap.error(f"no *.sql in {args.queries}")
    queries = []
    for f in files:
        with open(f) as fh:
            queries.append((os.path.splitext(os.path.basename(f))[0], fh.read().strip().rstrip(";").strip()))

    ndjson, parquet = ensure_data(args)
    d_rows, d_load, d_res = run_duckdb(parquet, queries, args.repeat, args.duckdb_threads)
    try:
        t_rows, t_load, t_res = run_tally(args, parquet, queries)
    except Exception as e:  # noqa: BLE001 - loading failed: still print the DuckDB side
        msg = f"{type(e).__name__}: {e}".strip()
        log(f"tally load failed: {msg}")
        t_rows, t_load = None, None
        t_res = {name: (None, None, f"load failed: {msg}") for name, _ in queries}

    print()
    print(f"Data: N = {args.users} users (--seed {args.seed}), {d_rows} events "
          f"(tally table: {t_rows if t_rows is not None else 'n/a'} rows); "
          f"events.ndjson {os.path.getsize(ndjson) / 1e6:.0f} MB, events.parquet {os.path.getsize(parquet) / 1e6:.0f} MB")
    print(f"Load: DuckDB {d_load:.2f}s (in-memory table), tally "
          + (f"{t_load:.2f}s (external Parquet -> Delta CREATE TABLE AS)" if t_load is not None else "failed"))
    print(f"Times: best of {args.repeat}, wall clock including fetching all rows (tally through psycopg).")
    print()
    print("| query | DuckDB s | tally s | tally/DuckDB | same answer |")
    print("|---|---:|---:|---:|---|")
    tot_d = tot_t = 0.0
    complete = True
    n_same = 0
    for name, sql in queries:
        db, dr, de = d_res[name]
        tb, tr, te = t_res[name]
        ds = f"{db:.3f}" if de is None else "error"
        ts = f"{tb:.3f}" if te is None else "error"
        ratio = f"{tb / db:.2f}" if de is None and te is None and db > 0 else "-"
        if de is None and te is None:
            same, diff = compare(sql, norm_rows(dr), norm_rows(tr))
            n_same += same
            verdict = "yes" if same else f"no: {diff}"
            tot_d += db
            tot_t += tb
        else:
            complete = False
            verdict = "; ".join(x for x in (de and f"DuckDB error: {de}", te and f"tally error: {te}") if x)
        print(f"| {name} | {ds} | {ts} | {ratio} | {cell(verdict)} |")
    note = "" if complete else " (queries that ran on both)"
    ratio = f"{tot_t / tot_d:.2f}" if tot_d > 0 else "-"
    print(f"| **total**{note} | {tot_d:.3f} | {tot_t:.3f} | {ratio} | {n_same}/{len(queries)} same |")
    if args.show_answers:
        for name, _ in queries:
            print()
            print(f"{name}:")
            for engine, res in (("DuckDB", d_res), ("tally", t_res)):
                rows = res[name][1]
                if rows is None:
                    print(f"  {engine}: error")
                    continue
                shown = ", ".join(fmt_row(r) for r in norm_rows(rows[:5]))
                print(f"  {engine} ({len(rows)} rows): {shown}{' ...' if len(rows) > 5 else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
