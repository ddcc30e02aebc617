#!/usr/bin/env python3
"""SQL-model benchmark (issue 7): one 50-model dbt project over the generator's events, run by
`tally models run` (embedded, over a warehouse folder), by `tally models run --url` against
`tally serve`, by dbt-core + dbt-postgres against `tally serve`, and by dbt-core + dbt-duckdb
against a DuckDB file, in the same run, over the same rows.

Steps:
  1. events: gen_customer_data.py --users N --seed 7, flattened to Parquet with DuckDB (both
     cached in /tmp/tally-bench-data/users<N>/, shared with bench_queries.py);
  2. the source tables web.pages, web.screens, web.tracks, web.identifies are loaded once into a
     tally warehouse (<work>/warehouse) and a DuckDB file (<work>/duck.duckdb);
  3. the project (generated into <work>/project-*): 4 staging views over the sources, 20 daily /
     weekly / monthly / hourly aggregate tables, 20 views over them, 5 incremental models
     (unique_key) and a summary table over 10 of the views: 50 models, 4 DAG levels;
  4. each runner: a --full-refresh run (everything built from the sources), then --runs
     ordinary runs (tables rebuilt, incremental models adding only new rows); wall time of the
     whole command, process start included, with --threads T everywhere;
  5. the summary tables of all runners must agree;
  6. runner overhead: 50 trivial views (chains of 5 over `select 1`), wall time / 50, with one
     thread and with T.

Usage: scripts/bench-models.sh [--users 108000] [--runs 3] [--threads 4]
(bench-models.sh builds the release binary and the dbt virtual environment, then runs this.)
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_queries  # noqa: E402  (its cached data and flattening)

STAGES = ["pages", "screens", "tracks", "identifies"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def source_selects(src: str) -> dict[str, str]:
    cols = "message_id, user_id, anonymous_id, ts AS \"timestamp\""
    return {
        "pages": f"SELECT {cols}, page_url AS name FROM {src} WHERE type = 'page'",
        "screens": f"SELECT {cols}, page_url AS name FROM {src} WHERE type = 'screen'",
        "tracks": f"SELECT {cols}, event AS event_text FROM {src} WHERE type = 'track'",
        "identifies": f"SELECT {cols} FROM {src} WHERE type = 'identify'",
    }


def load_tally(tally: str, parquet: str, wh: Path) -> None:
    marker = wh / ".bench-loaded"
    if marker.exists() and marker.read_text() == parquet:
        return
    shutil.rmtree(wh, ignore_errors=True)
    log(f"loading the sources into the tally warehouse {wh}")
    t = time.perf_counter()
    stmts = [
        f"CREATE EXTERNAL TABLE events_src STORED AS PARQUET LOCATION '{parquet}'",
        "CREATE SCHEMA web",
    ]
    stmts += [f"CREATE TABLE web.{t_} AS {q}" for t_, q in source_selects("events_src").items()]
    subprocess.run([tally, "sql", "--data", str(wh), *stmts], check=True, stdout=subprocess.DEVNULL)
    marker.write_text(parquet)
    log(f"  loaded in {time.perf_counter() - t:.1f}s")


def load_duckdb(parquet: str, path: Path) -> None:
    import duckdb

    marker = path.with_suffix(".loaded")
    if path.exists() and marker.exists() and marker.read_text() == parquet:
        return
    path.unlink(missing_ok=True)
    log(f"loading the sources into {path}")
    con = duckdb.connect(str(path))
    con.execute("CREATE SCHEMA web")
    for t_, q in source_selects(f"read_parquet('{parquet}')").items():
        con.execute(f"CREATE TABLE web.{t_} AS {q}")
    con.close()
    marker.write_text(parquet)


def generate_project(root: Path, profiles: str) -> int:
    shutil.rmtree(root, ignore_errors=True)
    models = root / "models"
    write(root / "dbt_project.yml", "name: bench\nconfig-version: 2\nprofile: bench\nmodels:\n  bench:\n    +materialized: view\n")
    write(root / "profiles.yml", profiles)
    write(
        models / "sources.yml",
        "version: 2\nsources:\n  - name: web\n    schema: web\n    tables: [{name: pages}, {name: screens}, {name: tracks}, {name: identifies}]\n",
    )
    for t in STAGES:
        write(
            models / f"stg_{t}.sql",
            "select message_id, user_id, anonymous_id, coalesce(user_id, anonymous_id) as person, \"timestamp\" as event_at\n"
            f"from {{{{ source('web', '{t}') }}}}\n",
        )
    aggs = []
    for i in range(20):
        t = STAGES[i % 4]
        grain = ["day", "week", "month", "hour", "day"][i % 5]
        name = f"agg_{t}_{grain}_{i}"
        write(
            models / f"{name}.sql",
            "{{ config(materialized='table') }}\n"
            f"select date_trunc('{grain}', event_at) as period, count(*) as events, count(distinct person) as people,\n"
            f"       count(distinct user_id) as users\nfrom {{{{ ref('stg_{t}') }}}}\n"
            f"where person is not null and length(message_id) > {i % 3}\ngroup by 1\n",
        )
        aggs.append(name)
    views = []
    for i, a in enumerate(aggs):
        write(
            models / f"rpt_{i}.sql",
            "select period, events, people, users, events * 1.0 / nullif(people, 0) as events_per_person\n"
            f"from {{{{ ref('{a}') }}}}\n",
        )
        views.append(f"rpt_{i}")
    for i in range(5):
        t = STAGES[i % 4]
        write(
            models / f"inc_{t}_{i}.sql",
            "{{ config(materialized='incremental', unique_key='person') }}\n"
            f"select person, max(event_at) as last_seen, count(*) as events\nfrom {{{{ ref('stg_{t}') }}}}\nwhere person is not null\n"
            "{% if is_incremental() %}and event_at > (select max(last_seen) from {{ this }}){% endif %}\n"
            "group by person\n",
        )
    union = "\nunion all\n".join(
        f"select '{v}' as report, sum(events) as events from {{{{ ref('{v}') }}}}" for v in views[:10]
    )
    write(models / "summary.sql", "{{ config(materialized='table') }}\n" + union + "\n")
    return len(list(models.glob("*.sql")))


def generate_trivial(root: Path, profiles: str) -> None:
    shutil.rmtree(root, ignore_errors=True)
    write(root / "dbt_project.yml", "name: trivial\nconfig-version: 2\nprofile: bench\n")
    write(root / "profiles.yml", profiles)
    for i in range(50):
        sql = f"select * from {{{{ ref('v{i - 1}') }}}}" if i % 5 else "select 1 as x"
        write(root / "models" / f"v{i}.sql", sql + "\n")


def profiles_yml(port: int, duck: Path, threads: int) -> str:
    return f"""bench:
  target: pg
  outputs:
    pg:
      type: postgres
      host: 127.0.0.1
      port: {port}
      user: tally
      password: ""
      dbname: tally
      schema: dbt_pg
      threads: {threads}
    duck:
      type: duckdb
      path: "{duck}"
      schema: dbt_duck
      threads: {threads}
"""


def timed(cmd: list[str], env: dict | None = None, cwd: Path | None = None) -> tuple[float, str]:
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}")
    return wall, proc.stdout


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_ready(port: int, proc: subprocess.Popen) -> None:
    for _ in range(300):
        if proc.poll() is not None:
            raise SystemExit("tally serve exited")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("tally serve did not start")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=108000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=4)
    # dbt-postgres on several threads against tally serve hits a server race: a session that
    # reads information_schema.columns while another renames a table (dbt's __dbt_tmp swap)
    # fails with "File not found .../<name>__dbt_tmp/_delta_log". One thread avoids it.
    ap.add_argument("--pg-threads", type=int, default=1)
    ap.add_argument("--work", default="/tmp/tally-bench-models")
    ap.add_argument("--data-dir")
    ap.add_argument("--datagen", default=os.path.join(bench_queries.SHARED, "datagen", "gen_customer_data.py"))
    ap.add_argument("--tally", default=os.environ.get("TALLY_BIN", "tally"))
    ap.add_argument("--dbt", default=os.environ.get("TALLY_DBT", "dbt"))
    args = ap.parse_args()

    _, parquet = bench_queries.ensure_data(
        types.SimpleNamespace(data_dir=args.data_dir, users=args.users, seed=args.seed, datagen=args.datagen)
    )
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    wh, duck = work / "warehouse", work / "duck.duckdb"
    load_tally(args.tally, parquet, wh)
    load_duckdb(parquet, duck)
    import duckdb

    con = duckdb.connect(str(duck), read_only=True)
    sizes = {t: con.execute(f"select count(*) from web.{t}").fetchone()[0] for t in STAGES}
    con.close()
    log(f"source rows: {sizes} (total {sum(sizes.values())})")

    port, http = free_port(), free_port()
    profiles = profiles_yml(port, duck, args.threads)
    projects = {k: work / f"project-{k}" for k in ("tally", "tally-wire", "pg", "duck")}
    for p in projects.values():
        n_models = generate_project(p, profiles)
    log(f"generated {n_models} models")
    env = dict(os.environ, DBT_SEND_ANONYMOUS_USAGE_STATS="false")
    url = f"postgres://tally@127.0.0.1:{port}/tally"
    T = str(args.threads)

    def tally_cmd(project: Path, *extra: str, wire: bool = False, threads: str = T) -> list[str]:
        where = ["--url", url] if wire else ["--data", str(wh)]
        return [args.tally, "models", "run", "--project", str(project), *where, "--threads", threads,
                "--target-schema", "tally_wire" if wire else "tally_models", *extra]

    def dbt_cmd(project: Path, target: str, *extra: str, threads: str = T) -> list[str]:
        return [args.dbt, "--no-use-colors", "run", "--project-dir", str(project), "--profiles-dir", str(project),
                "--target", target, "--threads", threads, *extra]


    results: dict[str, dict[str, object]] = {}

    def series(name: str, make) -> None:
        full, _ = timed(make("--full-refresh"), env=env)
        runs = [timed(make(), env=env)[0] for _ in range(args.runs)]
        results[name] = {"full": full, "runs": runs}
        log(f"{name}: full refresh {full:.2f}s, runs {', '.join(f'{r:.2f}' for r in runs)}")

    trivial = work / "trivial"
    generate_trivial(trivial, profiles)
    overhead: dict[str, float] = {}

    def trivial_time(name: str, make) -> None:
        timed(make(), env=env)  # first run creates the views; time the replacing runs
        walls = []
        inner = []
        for _ in range(3):
            wall, out = timed(make(), env=env)
            walls.append(wall)
            m = re.search(r" in ([0-9.]+)s", out.splitlines()[-1] if out else "")
            if m:
                inner.append(float(m.group(1)))
        overhead[name] = min(walls)
        if inner:
            overhead[name + " (runner's own time)"] = min(inner)

    # 1. tally embedded.
    series("tally models run (embedded)", lambda *e: tally_cmd(projects["tally"], *e))
    trivial_time("tally models run, 1 thread", lambda: tally_cmd(trivial, threads="1"))
    trivial_time(f"tally models run, {T} threads", lambda: tally_cmd(trivial))

    # 2. against tally serve: tally models --url and dbt-postgres.
    server = subprocess.Popen(
        [args.tally, "serve", "--data", str(wh), "--pg-listen", f"127.0.0.1:{port}", "--http-listen", f"127.0.0.1:{http}"],
        stdout=subprocess.DEVNULL, stderr=open(work / "serve.log", "w"),
    )
    try:
        wait_ready(port, server)
        series("tally models run --url (tally serve)", lambda *e: tally_cmd(projects["tally-wire"], *e, wire=True))
        pg_t = str(args.pg_threads)
        series(f"dbt-core + dbt-postgres (tally serve), {pg_t} thread(s)",
               lambda *e: dbt_cmd(projects["pg"], "pg", *e, threads=pg_t))
        trivial_time(f"dbt-postgres (tally serve), {pg_t} thread(s)", lambda: dbt_cmd(trivial, "pg", threads=pg_t))
    finally:
        server.terminate()
        server.wait(timeout=60)

    # 3. dbt-duckdb.
    series("dbt-core + dbt-duckdb (DuckDB)", lambda *e: dbt_cmd(projects["duck"], "duck", *e))
    trivial_time(f"dbt-duckdb, {T} threads", lambda: dbt_cmd(trivial, "duck"))

    # Same answers: the summary table of each runner.
    import duckdb as dd

    con = dd.connect(str(duck), read_only=True)
    theirs = con.execute("select report, cast(events as bigint) from dbt_duck.summary order by 1").fetchall()
    con.close()
    summaries = {}
    for schema in ("tally_models", "tally_wire", "dbt_pg"):
        proc = subprocess.run(
            [args.tally, "sql", "--data", str(wh), f"select report || '=' || cast(events as bigint) as r from {schema}.summary order by 1"],
            capture_output=True, text=True, check=True,
        )
        summaries[schema] = re.findall(r"(rpt_\d+)=(\d+)", proc.stdout)
    expected = [(r, str(e)) for r, e in theirs]
    for schema, got in summaries.items():
        status = "same" if got == expected else f"DIFFERENT: {got} vs {expected}"
        print(f"summary of {schema} vs dbt_duck: {status}")

    duck_run = statistics.median(results["dbt-core + dbt-duckdb (DuckDB)"]["runs"])
    duck_full = results["dbt-core + dbt-duckdb (DuckDB)"]["full"]
    print(f"\n{n_models} models, {sum(sizes.values()):,} source rows ({args.users} users), threads {T}, "
          f"{os.cpu_count()} cores\n")
    print("| runner | --full-refresh | run (median of %d) | run vs dbt-duckdb |" % args.runs)
    print("|---|---:|---:|---:|")
    for name, r in results.items():
        med = statistics.median(r["runs"])
        print(f"| {name} | {r['full']:.2f} s | {med:.2f} s | {med / duck_run:.2f}x (full: {r['full'] / duck_full:.2f}x) |")
    print("\n| 50 trivial views | wall | per model |")
    print("|---|---:|---:|")
    for name, w in overhead.items():
        print(f"| {name} | {w:.3f} s | {w * 1000 / 50:.1f} ms |")


if __name__ == "__main__":
    main()
