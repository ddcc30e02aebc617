#!/usr/bin/env python3
"""Loading benchmark: COPY FROM STDIN of N CSV rows and INSERT ... SELECT of M rows, tally
against PostgreSQL, same data, same run. The CSV comes from PostgreSQL's
`COPY (generate_series ...) TO STDOUT`; both servers load it through `psql \\copy`.

Usage: bench_loading.py --tally-port P [--pg-port 5432 --pg-db test] [--rows 1000000] [--insert-rows 10000000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile

from bench_streaming import psql  # same timed psql call


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tally-port", type=int, required=True)
    ap.add_argument("--pg-port", type=int, default=5432)
    ap.add_argument("--pg-db", default="test")
    ap.add_argument("--pg-user", default="postgres")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--insert-rows", type=int, default=10_000_000)
    a = ap.parse_args()
    pg = (a.pg_port, a.pg_db, a.pg_user)
    ta = (a.tally_port, "tally", "tally")
    with tempfile.TemporaryDirectory() as d:
        csv = os.path.join(d, "rows.csv")
        with open(csv, "w") as f:
            subprocess.run(["psql", "-X", "-h", "127.0.0.1", "-p", str(a.pg_port), "-U", a.pg_user, "-d", a.pg_db, "-c",
                            f"COPY (SELECT g AS id, md5(g::text) AS name, g * 1.5 AS score, g % 100 AS bucket FROM generate_series(1, {a.rows}) g) TO STDOUT WITH (FORMAT csv)"],
                           check=True, stdout=f)
        ddl = "DROP TABLE IF EXISTS bench_load; CREATE TABLE bench_load (id bigint, name text, score double precision, bucket integer)"
        ins = "DROP TABLE IF EXISTS bench_ins; CREATE TABLE bench_ins (id bigint, name text, score double precision, bucket integer)"
        results = {}
        for name, (port, db, user) in (("PostgreSQL", pg), ("tally", ta)):
            psql(port, db, user, ddl)
            copy = psql(port, db, user, f"\\copy bench_load FROM '{csv}' WITH (FORMAT csv)")
            psql(port, db, user, ins)
            gen = (f"INSERT INTO bench_ins SELECT g, md5(g::text), g * 1.5, (g % 100)::int FROM generate_series(1, {a.insert_rows}) g"
                   if name == "PostgreSQL" else
                   f"INSERT INTO bench_ins SELECT value, md5(CAST(value AS text)), value * 1.5, CAST(value % 100 AS int) FROM generate_series(1, {a.insert_rows})")
            insert = psql(port, db, user, gen)
            results[name] = (copy, insert)
    print(f"Loading: COPY FROM STDIN of {a.rows:,} CSV rows, INSERT ... SELECT of {a.insert_rows:,} rows\n")
    print("| path | PostgreSQL rows/s | tally rows/s | tally / PostgreSQL |")
    print("|---|---:|---:|---:|")
    for i, (label, n) in enumerate((("COPY FROM STDIN (psql \\copy, CSV)", a.rows), ("INSERT ... SELECT generate_series", a.insert_rows))):
        p, t = n / results["PostgreSQL"][i], n / results["tally"][i]
        print(f"| {label} | {p:,.0f} | {t:,.0f} | {t / p:.2f}x |")


if __name__ == "__main__":
    main()
