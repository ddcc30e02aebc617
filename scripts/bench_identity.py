#!/usr/bin/env python3
"""Identity-resolution benchmark: tally's identity_stitch against python-igraph's
connected_components and DuckDB's warehouse-style iterative SQL label propagation, same
edges, same run, each including its own load and id mapping.

Steps:
  1. generate the edges with scripts/datagen/gen_customer_data.py --users N --seed S
     --edges-only (cached in /tmp/tally-bench-data/identity-u<N>-s<S>/ unless --data-dir);
  2. tally (running, TALLY_PORT): CREATE EXTERNAL TABLE edges_csv over the CSV, load it into
     a Delta table `edges` (timed separately as "load"), then time
     CREATE TABLE map AS SELECT * FROM identity_stitch('edges') (the issue's end-to-end
     measure), and identity_stitch straight from the CSV (load included, like the peers);
     peak memory is the server's resident set sampled every 20 ms during the statement;
  3. igraph (subprocess): pandas read_csv, factorize the identifiers, Graph, connected
     components, map the membership back to the identifiers;
  4. DuckDB (subprocess): read_csv into a table, number the identifiers, then iterate
     `label = least(label, min(neighbour label))` until nothing changes, join back;
  5. print a Markdown table: seconds, ratios, peak memory, and component counts.

With --unrestricted, identity_stitch runs with limits, blocklist and max_degree off, so all
three compute the same connected components (counts are compared); by default tally runs
its default options (the production setting), and the counts differ by design.

Usage: TALLY_PORT=5433 bench_identity.py [--users 1490000] [--seed 1] [--skip duckdb]
(scripts/bench-identity.sh builds tally, starts a server and runs this.)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
UNRESTRICTED = '{"limits": null, "max_degree": null, "default_blocklist": false, "merge_edges": []}'


# Newest edges held back from the persisted graph and folded in by one incremental refresh
# (the 100k); 0 skips that part.
INCREMENTAL_EDGES = int(os.environ.get("INCREMENTAL_EDGES", "100000"))


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def generate(users: int, seed: int, out: str) -> None:
    if os.path.exists(os.path.join(out, "manifest.json")):
        log(f"using cached data in {out}")
        return
    os.makedirs(out, exist_ok=True)
    log(f"generating {users} users into {out} ...")
    subprocess.run([sys.executable, os.path.join(HERE, "datagen", "gen_customer_data.py"),
                    "--users", str(users), "--seed", str(seed), "--edges-only", "--out", out],
                   check=True, stdout=subprocess.DEVNULL)


# ---------------------------------------------------------------------------- peers

def run_igraph(csv: str) -> dict:
    import igraph as ig
    import numpy as np
    import pandas as pd
    t0 = time.perf_counter()
    df = pd.read_csv(csv, dtype=str, usecols=[0, 1, 2, 3], keep_default_na=False)
    left = df["left_type"] + "\x1f" + df["left_value"]
    right = df["right_type"] + "\x1f" + df["right_value"]
    n = len(df)
    del df
    codes, uniques = pd.factorize(pd.concat([left, right], ignore_index=True))
    del left, right
    edges = np.column_stack([codes[:n], codes[n:]])
    t_load = time.perf_counter() - t0
    g = ig.Graph(n=len(uniques), edges=edges)
    membership = g.connected_components().membership
    t_cc = time.perf_counter() - t0 - t_load
    split = pd.Series(uniques).str.split("\x1f", n=1, expand=True)
    result = pd.DataFrame({"identifier_type": split[0], "identifier_value": split[1],
                           "component": membership})
    total = time.perf_counter() - t0
    return {"seconds": total, "load": t_load, "components_s": t_cc,
            "components": int(result["component"].nunique()), "rows": len(result),
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_duckdb(csv: str) -> dict:
    import duckdb
    t0 = time.perf_counter()
    con = duckdb.connect()
    con.execute(f"CREATE TABLE e AS SELECT * FROM read_csv('{csv}', header = true, all_varchar = true)")
    con.execute("""CREATE TABLE ids AS SELECT row_number() OVER () AS id, t, v FROM (
                     SELECT left_type AS t, left_value AS v FROM e
                     UNION SELECT right_type, right_value FROM e)""")
    con.execute("""CREATE TABLE g AS
                   SELECT l.id AS a, r.id AS b FROM e
                   JOIN ids l ON l.t = e.left_type AND l.v = e.left_value
                   JOIN ids r ON r.t = e.right_type AND r.v = e.right_value""")
    con.execute("CREATE TABLE g2 AS SELECT a, b FROM g UNION ALL SELECT b, a FROM g")
    con.execute("CREATE TABLE lab AS SELECT id, id AS label FROM ids")
    t_load = time.perf_counter() - t0
    iterations = 0
    while True:
        iterations += 1
        con.execute("""CREATE TABLE lab2 AS
                       SELECT l.id, least(l.label, coalesce(min(n.label), l.label)) AS label
                       FROM lab l LEFT JOIN g2 ON g2.a = l.id LEFT JOIN lab n ON n.id = g2.b
                       GROUP BY l.id, l.label""")
        changed = con.execute("SELECT count(*) FROM lab JOIN lab2 USING (id) "
                              "WHERE lab.label <> lab2.label").fetchone()[0]
        con.execute("DROP TABLE lab")
        con.execute("ALTER TABLE lab2 RENAME TO lab")
        if changed == 0:
            break
    con.execute("CREATE TABLE map AS SELECT ids.t AS identifier_type, ids.v AS identifier_value, "
                "lab.label AS component FROM ids JOIN lab USING (id)")
    components = con.execute("SELECT count(DISTINCT component) FROM map").fetchone()[0]
    total = time.perf_counter() - t0
    return {"seconds": total, "load": t_load, "iterations": iterations,
            "components": int(components),
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def peer(name: str, csv: str) -> dict:
    log(f"{name} ...")
    out = subprocess.run([sys.executable, __file__, "--peer", name, "--csv", csv],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------- tally

def tally_pid(port: int) -> int | None:
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
        except OSError:
            continue
        if any(b"tally" in c for c in cmd[:1]) and f"127.0.0.1:{port}".encode() in cmd:
            return int(pid)
    return None


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Sampler:
    """Samples a process's resident set every 20 ms; `peak` is the maximum seen."""

    def __init__(self, pid: int | None):
        self.pid, self.peak, self.stop = pid, 0.0, threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set() and self.pid:
            self.peak = max(self.peak, rss_mb(self.pid))
            time.sleep(0.02)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def run_tally(port: int, csv: str, options: str | None) -> dict:
    import psycopg
    pid = tally_pid(port)
    conn = psycopg.connect(host="127.0.0.1", port=port, user="tally", dbname="tally", autocommit=True)
    cur = conn.cursor()
    for t in ("map", "map_csv", "edges"):
        cur.execute(f"DROP TABLE IF EXISTS {t}")
    cur.execute("DROP TABLE IF EXISTS edges_csv")
    cur.execute(f"CREATE EXTERNAL TABLE edges_csv (left_type text, left_value text, right_type text, "
                f"right_value text, event_ts text) STORED AS CSV LOCATION '{csv}' "
                f"OPTIONS ('format.has_header' 'true')")
    log("tally: loading edges into a Delta table ...")
    t0 = time.perf_counter()
    cur.execute("CREATE TABLE edges AS SELECT left_type, left_value, right_type, right_value, "
                "CAST(event_ts AS timestamp) AS event_ts FROM edges_csv")
    t_load = time.perf_counter() - t0
    arg = "" if options is None else ", '" + options.replace("'", "''") + "'"
    base = rss_mb(pid) if pid else 0.0
    log("tally: identity_stitch from the Delta table ...")
    with Sampler(pid) as s:
        t0 = time.perf_counter()
        cur.execute(f"CREATE TABLE map AS SELECT * FROM identity_stitch('edges'{arg})")
        t_stitch = time.perf_counter() - t0
    peak = s.peak
    rows, components = cur.execute("SELECT count(*), count(DISTINCT profile_id) FROM map").fetchone()
    log("tally: identity_stitch straight from the CSV ...")
    with Sampler(pid) as s2:
        t0 = time.perf_counter()
        cur.execute(f"CREATE TABLE map_csv AS SELECT * FROM identity_stitch('edges_csv'{arg})")
        t_csv = time.perf_counter() - t0
    inc = run_incremental(cur, options) if INCREMENTAL_EDGES else None
    conn.close()
    return {"seconds": t_stitch, "load": t_load, "from_csv": t_csv, "rows": rows,
            "components": components, "peak_mb": peak, "base_mb": base,
            "peak_csv_mb": s2.peak, "incremental": inc}


def run_incremental(cur, options: str | None) -> dict:
    """A persisted graph over all but the newest INCREMENTAL_EDGES edges (by event_ts), then
    those edges appended and folded in by REFRESH IDENTITY GRAPH (timed), then REFRESH ...
    FULL over everything (timed, for reference)."""
    cur.execute("DROP IDENTITY GRAPH IF EXISTS g")
    cur.execute("DROP TABLE IF EXISTS graph_edges")
    cutoff = cur.execute("SELECT CAST(event_ts AS text) AS cutoff FROM edges ORDER BY event_ts DESC "
                         f"LIMIT 1 OFFSET {INCREMENTAL_EDGES - 1}").fetchone()[0]
    # A literal, not a parameter: like PostgreSQL, tally takes no parameters in utility
    # statements such as CREATE TABLE AS.
    cutoff = "TIMESTAMP '" + cutoff.replace("'", "''") + "'"
    cur.execute("CREATE TABLE graph_edges AS SELECT left_type, left_value, right_type, right_value, "
                f"event_ts, CAST(1 AS bigint) AS batch FROM edges WHERE event_ts < {cutoff} OR event_ts IS NULL")
    with_opts = "incremental_column = 'batch'"
    if options is not None:
        with_opts += ", options = '" + options.replace("'", "''") + "'"
    log("tally: CREATE IDENTITY GRAPH over the older edges ...")
    t0 = time.perf_counter()
    cur.execute(f"CREATE IDENTITY GRAPH g FROM graph_edges WITH ({with_opts})")
    t_create = time.perf_counter() - t0
    cur.execute("INSERT INTO graph_edges SELECT left_type, left_value, right_type, right_value, "
                f"event_ts, CAST(2 AS bigint) FROM edges WHERE event_ts >= {cutoff}")
    added = cur.rowcount
    log(f"tally: REFRESH IDENTITY GRAPH folding in {added:,} new edges ...")
    t0 = time.perf_counter()
    cur.execute("REFRESH IDENTITY GRAPH g")
    t_refresh = time.perf_counter() - t0
    changes = cur.execute("SELECT count(*) FROM g_map_changes").fetchone()[0]
    rows, profiles = cur.execute("SELECT count(*), count(DISTINCT profile_id) FROM g_map").fetchone()
    merges = cur.execute("SELECT count(*) FROM g_merges").fetchone()[0]
    log("tally: REFRESH IDENTITY GRAPH FULL ...")
    t0 = time.perf_counter()
    cur.execute("REFRESH IDENTITY GRAPH g FULL")
    t_full = time.perf_counter() - t0
    full_rows, full_profiles = cur.execute(
        "SELECT count(*), count(DISTINCT profile_id) FROM g_map").fetchone()
    cur.execute("DROP IDENTITY GRAPH g")
    return {"create": t_create, "added": added, "refresh": t_refresh, "changes": changes,
            "rows": rows, "profiles": profiles, "merges": merges, "full": t_full,
            "full_rows": full_rows, "full_profiles": full_profiles}


# ---------------------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=1_490_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--data-dir")
    ap.add_argument("--skip", action="append", default=[], help="igraph or duckdb")
    ap.add_argument("--unrestricted", action="store_true")
    ap.add_argument("--peer")
    ap.add_argument("--csv")
    a = ap.parse_args()
    if a.peer:
        print(json.dumps(run_igraph(a.csv) if a.peer == "igraph" else run_duckdb(a.csv)))
        return
    data = a.data_dir or f"/tmp/tally-bench-data/identity-u{a.users}-s{a.seed}"
    generate(a.users, a.seed, data)
    csv = os.path.join(data, "identity_edges.csv")
    manifest = json.load(open(os.path.join(data, "manifest.json")))
    port = int(os.environ["TALLY_PORT"])
    t = run_tally(port, csv, UNRESTRICTED if a.unrestricted else None)
    peers = {name: peer(name, csv) for name in ("igraph", "duckdb") if name not in a.skip}
    edges = manifest["counts"]["edges"]
    ids = sum(manifest["counts"]["identifiers_by_type"].values())
    print(f"Identity resolution: {edges:,} edges, {ids:,} identifiers "
          f"(--users {a.users} --seed {a.seed}); tally options: "
          f"{'unrestricted' if a.unrestricted else 'defaults'}\n")
    print("| engine | end-to-end s | vs igraph | vs DuckDB | peak memory MB | components |")
    print("|---|---:|---:|---:|---:|---:|")

    def ratio(x: float, name: str) -> str:
        return f"{x / peers[name]['seconds']:.3f}x" if name in peers else "-"

    rows = [("tally identity_stitch, Delta table -> CTAS map", t["seconds"], t["peak_mb"], t["components"]),
            ("tally identity_stitch, CSV -> CTAS map (load included)", t["from_csv"], t["peak_csv_mb"], t["components"])]
    for name, label in (("igraph", "igraph connected_components (pandas load + id mapping)"),
                        ("duckdb", "DuckDB iterative SQL label propagation")):
        if name in peers:
            rows.append((label, peers[name]["seconds"], peers[name]["peak_mb"], peers[name]["components"]))
    for label, s, mb, comps in rows:
        print(f"| {label} | {s:.2f} | {ratio(s, 'igraph')} | {ratio(s, 'duckdb')} | {mb:,.0f} | {comps:,} |")
    print(f"\ntally: loading the CSV into the Delta table `edges` took {t['load']:.2f}s (not in the "
          f"row above); server resident set before the statement {t['base_mb']:,.0f} MB.")
    if "duckdb" in peers:
        print(f"DuckDB: {peers['duckdb']['iterations']} label-propagation iterations.")
    inc = t["incremental"]
    if inc:
        print(f"\nIncremental refresh of a persisted graph (REFRESH IDENTITY GRAPH):\n")
        print("| step | s | vs end-to-end identity_stitch |")
        print("|---|---:|---:|")
        for label, secs in (("CREATE IDENTITY GRAPH (older edges, map written)", inc["create"]),
                            (f"REFRESH folding in {inc['added']:,} newest edges", inc["refresh"]),
                            ("REFRESH ... FULL (all edges, merge history compared)", inc["full"])):
            print(f"| {label} | {secs:.2f} | {secs / t['seconds']:.3f}x |")
        print(f"\nAfter the incremental refresh: {inc['changes']:,} change rows written, "
              f"{inc['merges']:,} profile ids merged, map {inc['rows']:,} identifiers in "
              f"{inc['profiles']:,} profiles; after FULL: {inc['full_rows']:,} in "
              f"{inc['full_profiles']:,}.")
    print(f"Expected components (manifest, all edges): {manifest['expected_components']['all_edges']:,}")


if __name__ == "__main__":
    main()
