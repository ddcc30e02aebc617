#!/usr/bin/env python3
"""Result-streaming benchmark: tally against PostgreSQL, same table, same run, same clients.

Builds an N-row, 8-column table (bigint, text, double, int, bool, timestamp, date, numeric) in
both servers, then times three paths per server, best of --repeat runs:
  - `psql -c "COPY (SELECT * FROM t) TO STDOUT"`   (bulk export)
  - `psql -At -c "SELECT * FROM t"`                 (row protocol through psql)
  - psycopg `cursor.fetchall()`                     (driver decoding)
and the time to the first row through psql. Prints a Markdown table with rows/s and the
tally/PostgreSQL ratio (above 1.0 means tally is faster).

Usage: bench_streaming.py --tally-port P --pg-port 5432 --pg-db test --rows 1000000
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time

import psycopg

PG_SETUP = """
DROP TABLE IF EXISTS bench_stream;
CREATE TABLE bench_stream AS
SELECT g::bigint AS id, md5(g::text) AS name, g * 1.5 AS score, (g % 100)::int AS bucket,
       (g % 2 = 0) AS flag, timestamp '2024-01-01' + g * interval '1 second' AS ts,
       date '2024-01-01' + (g % 365)::int AS day, ((g % 100000) / 100.0)::numeric(10,2) AS amount
FROM generate_series(1, {n}) g;
"""

TALLY_SETUP = """
DROP TABLE IF EXISTS bench_stream;
CREATE TABLE bench_stream AS
SELECT value AS id, md5(CAST(value AS text)) AS name, value * 1.5 AS score,
       CAST(value % 100 AS int) AS bucket, (value % 2 = 0) AS flag,
       CAST(to_timestamp(1704067200 + value) AS timestamp) AS ts,
       CAST(to_timestamp(1704067200 + (value % 365) * 86400) AS date) AS day,
       CAST((value % 100000) / 100.0 AS numeric(10,2)) AS amount
FROM generate_series(1, {n});
"""


def psql(port: int, db: str, user: str, sql: str, out=subprocess.DEVNULL, extra: tuple = ()) -> float:
    start = time.perf_counter()
    subprocess.run(
        ["psql", "-X", "-q", "-h", "127.0.0.1", "-p", str(port), "-U", user, "-d", db, *extra, "-c", sql],
        check=True,
        stdout=out,
        env={**os.environ, "PGCONNECT_TIMEOUT": "10"},
    )
    return time.perf_counter() - start


def first_row(port: int, db: str, user: str) -> float:
    start = time.perf_counter()
    p = subprocess.Popen(
        ["psql", "-X", "-At", "-h", "127.0.0.1", "-p", str(port), "-U", user, "-d", db, "-c", "COPY (SELECT * FROM bench_stream) TO STDOUT"],
        stdout=subprocess.PIPE,
    )
    assert p.stdout is not None
    p.stdout.readline()
    elapsed = time.perf_counter() - start
    p.kill()
    p.wait()
    return elapsed


def fetchall(port: int, db: str, user: str) -> float:
    with psycopg.connect(host="127.0.0.1", port=port, dbname=db, user=user) as conn:
        start = time.perf_counter()
        rows = conn.execute("SELECT * FROM bench_stream").fetchall()
        elapsed = time.perf_counter() - start
    assert rows
    return elapsed


def measure(name: str, port: int, db: str, user: str, n: int, repeat: int) -> dict[str, float]:
    best = lambda f: min(f() for _ in range(repeat))  # noqa: E731
    return {
        "copy": best(lambda: psql(port, db, user, "COPY (SELECT * FROM bench_stream) TO STDOUT")),
        "psql": best(lambda: psql(port, db, user, "SELECT * FROM bench_stream", extra=("-At",))),
        "fetchall": best(lambda: fetchall(port, db, user)),
        "first_row": best(lambda: first_row(port, db, user)),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tally-port", type=int, required=True)
    ap.add_argument("--pg-port", type=int, default=5432)
    ap.add_argument("--pg-db", default="test")
    ap.add_argument("--pg-user", default="postgres")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    psql(a.pg_port, a.pg_db, a.pg_user, PG_SETUP.format(n=a.rows))
    psql(a.tally_port, "tally", "tally", TALLY_SETUP.format(n=a.rows))
    pg = measure("postgres", a.pg_port, a.pg_db, a.pg_user, a.rows, a.repeat)
    ta = measure("tally", a.tally_port, "tally", "tally", a.rows, a.repeat)
    print(f"Result streaming, {a.rows:,} rows x 8 columns, best of {a.repeat}\n")
    print("| path | PostgreSQL rows/s | tally rows/s | tally / PostgreSQL |")
    print("|---|---:|---:|---:|")
    labels = {"copy": "psql COPY (SELECT *) TO STDOUT", "psql": "psql -At SELECT *", "fetchall": "psycopg fetchall"}
    for k, label in labels.items():
        p, t = a.rows / pg[k], a.rows / ta[k]
        print(f"| {label} | {p:,.0f} | {t:,.0f} | {t / p:.2f}x |")
    print(f"| first row through psql COPY | {pg['first_row'] * 1000:.0f} ms | {ta['first_row'] * 1000:.0f} ms | |")


if __name__ == "__main__":
    main()
