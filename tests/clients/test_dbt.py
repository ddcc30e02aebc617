"""Real dbt-core with the unmodified dbt-postgres adapter against the server under test.

The project in ``tests/clients/dbt_shop`` is copied to a temporary folder and run with a profile
pointing at the server, in a schema of its own. Every step is a real ``dbt`` process: seed,
run (views, tables, ephemeral and incremental models with the append, merge and
delete+insert strategies), test, snapshot (timestamp strategy), a second run after the seeds
changed (the incremental models must update, not duplicate), build, and docs generate. The
results are read back with psycopg and must be what PostgreSQL gives for the same project
(run the suite against PostgreSQL to check: see conftest.py).

dbt itself comes from ``$TALLY_DBT`` (scripts/clients.sh installs dbt-core 1.11 and
dbt-postgres 1.11 in a virtual environment of their own), else ``dbt`` on the PATH.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import psycopg
import pytest

PROJECT = Path(__file__).resolve().parent / "dbt_shop"


def _dbt_binary() -> str:
    exe = os.environ.get("TALLY_DBT") or shutil.which("dbt")
    if not exe:
        pytest.fail("dbt is not installed: run scripts/clients.sh, which installs it")
    return exe


class Dbt:
    """One copy of the test project wired to the server under test, in its own schema."""

    def __init__(self, info, root: Path, schema: str):
        self.info = info
        self.root = root
        self.schema = schema
        self.exe = _dbt_binary()
        profile = {
            "tally_test": {
                "target": "dev",
                "outputs": {
                    "dev": {
                        "type": "postgres",
                        "host": info.host,
                        "port": info.port,
                        "user": info.user,
                        "password": info.password or "",
                        "dbname": info.dbname,
                        "schema": schema,
                        "threads": 2,
                        "connect_timeout": 10,
                    }
                },
            }
        }
        (root / "profiles.yml").write_text(json.dumps(profile))

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ)
        env["DBT_SEND_ANONYMOUS_USAGE_STATS"] = "false"
        env["DBT_PROFILES_DIR"] = str(self.root)
        env.pop("DBT_TARGET_PATH", None)
        proc = subprocess.run(
            [self.exe, "--no-use-colors", *args, "--project-dir", str(self.root)],
            capture_output=True,
            text=True,
            env=env,
            cwd=self.root,
            timeout=300,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"dbt {' '.join(args)} exited {proc.returncode}\n{proc.stdout[-6000:]}\n{proc.stderr[-2000:]}"
            )
        return proc

    def query(self, sql: str) -> list[tuple]:
        with psycopg.connect(self.info.conninfo(), autocommit=True) as conn:
            return conn.execute(sql).fetchall()


@pytest.fixture
def dbt(info, tmp_path):
    root = tmp_path / "project"
    shutil.copytree(PROJECT, root, ignore=shutil.ignore_patterns("target", "logs", "dbt_packages"))
    schema = f"dbt_{uuid.uuid4().hex[:10]}"
    d = Dbt(info, root, schema)
    yield d
    with psycopg.connect(info.conninfo(), autocommit=True) as conn:
        for s in (schema, f"{schema}_snapshots"):
            try:
                conn.execute(f'drop schema if exists "{s}" cascade')
            except psycopg.Error:
                pass


def test_dbt_debug(dbt):
    out = dbt.run("debug").stdout
    assert "All checks passed" in out


def test_dbt_project_end_to_end(dbt):
    s = dbt.schema
    dbt.run("seed")
    assert dbt.query(f'select count(*) from "{s}".raw_customers')[0][0] == 4

    dbt.run("run")
    # A view and a table, with the ephemeral model inlined.
    rows = dbt.query(f'select customer_id, email, plan from "{s}".stg_customers order by 1')
    assert rows[0] == (1, "ann@example.com", "pro")
    kinds = dict(
        dbt.query(
            "select table_name, table_type from information_schema.tables "
            f"where table_schema = '{s}' order by 1"
        )
    )
    assert kinds["stg_customers"] == "VIEW"
    assert kinds["customer_orders"] == "BASE TABLE"
    revenue = dict(dbt.query(f'select customer_id, revenue from "{s}".customer_orders'))
    assert float(revenue[1]) == pytest.approx(24.99)

    dbt.run("test")
    dbt.run("snapshot")
    snap = dbt.query(f'select count(*) from "{s}_snapshots".customers_snapshot where dbt_valid_to is null')
    assert snap[0][0] == 4

    # New data arrives: one order changes, one is new; one customer changes plan.
    seeds = dbt.root / "seeds"
    orders = (seeds / "raw_orders.csv").read_text()
    orders = orders.replace("12,2,42.50,2024-02-04 12:00:00", "12,2,45.00,2024-02-06 12:00:00")
    (seeds / "raw_orders.csv").write_text(orders + "14,4,3.00,2024-02-07 09:00:00\n")
    customers = (seeds / "raw_customers.csv").read_text()
    customers = customers.replace("2,bob@example.com,free,2024-01-04 11:30:00", "2,bob@example.com,pro,2024-03-01 08:00:00")
    (seeds / "raw_customers.csv").write_text(customers)
    dbt.run("seed", "--full-refresh")
    dbt.run("run")

    for model in ("orders_merge", "orders_delete_insert"):
        rows = dbt.query(f'select order_id, amount from "{s}".{model} order by 1')
        assert [r[0] for r in rows] == [10, 11, 12, 13, 14], model
        assert float(dict(rows)[12]) == pytest.approx(45.0), model
    # Append adds only rows past the high-water mark: the moved order 12 and the new 14.
    appended = dbt.query(f'select order_id from "{s}".orders_append order by 1')
    assert [r[0] for r in appended] == [10, 11, 12, 12, 13, 14]

    dbt.run("snapshot")
    history = dbt.query(
        f'select id, plan, dbt_valid_to is null from "{s}_snapshots".customers_snapshot where id = 2 order by dbt_valid_from'
    )
    assert history == [(2, "free", False), (2, "pro", True)]

    dbt.run("build")
    dbt.run("docs", "generate")
    catalog = json.loads((dbt.root / "target" / "catalog.json").read_text())
    nodes = {k.split(".")[-1]: v for k, v in catalog["nodes"].items()}
    assert "customer_orders" in nodes
    cols = {c.lower() for c in nodes["customer_orders"]["columns"]}
    assert {"customer_id", "email", "revenue"} <= cols
    assert nodes["stg_customers"]["metadata"]["comment"] == "Customers, cleaned."


def test_dbt_failing_test_is_reported(dbt):
    dbt.run("seed")
    dbt.run("run", "--select", "stg_customers")
    bad = dbt.root / "tests" / "no_free_plans.sql"
    bad.write_text(f"select * from {{{{ ref('stg_customers') }}}} where plan = 'free'\n")
    proc = dbt.run("test", "--select", "no_free_plans", check=False)
    assert proc.returncode == 1
    # Two customers are on the free plan.
    assert "FAIL 2" in proc.stdout
    assert "Got 2 results" in proc.stdout


def test_tally_models_builds_the_same_project_as_dbt(dbt, info):
    """``tally models build`` on the same project, on the same server, gives the same tables,
    and the same snapshot history as ``dbt snapshot`` after the seeds change."""
    tally = os.environ.get("TALLY_BIN")
    if not tally or not os.access(tally, os.X_OK):
        pytest.skip("TALLY_BIN is not set (scripts/clients.sh sets it)")
    dbt.run("seed")
    dbt.run("run")
    dbt.run("snapshot")
    ours = f"{dbt.schema}_tally"
    auth = info.user if not info.password else f"{info.user}:{info.password}"
    url = f"postgresql://{auth}@{info.host}:{info.port}/{info.dbname}"

    def tally_build():
        proc = subprocess.run(
            [tally, "models", "build", "--project", str(dbt.root), "--url", url, "--target-schema", ours],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr

    def same_snapshot():
        order = "order by id, dbt_valid_from"
        theirs = dbt.query(f'select * from "{dbt.schema}_snapshots".customers_snapshot {order}')
        mine = dbt.query(f'select * from "{ours}_snapshots".customers_snapshot {order}')
        assert mine == theirs
        return mine

    try:
        tally_build()
        for model, key in [
            ("stg_customers", "customer_id"),
            ("customer_orders", "customer_id"),
            ("orders_append", "order_id"),
            ("orders_merge", "order_id"),
            ("orders_delete_insert", "order_id"),
        ]:
            theirs = dbt.query(f'select * from "{dbt.schema}".{model} order by {key}')
            mine = dbt.query(f'select * from "{ours}".{model} order by {key}')
            assert mine == theirs, model
        assert len(same_snapshot()) == 4

        # Bob moves to the pro plan: both tools close his old version and add the new one.
        seeds = dbt.root / "seeds"
        customers = (seeds / "raw_customers.csv").read_text()
        customers = customers.replace(
            "2,bob@example.com,free,2024-01-04 11:30:00", "2,bob@example.com,pro,2024-03-01 08:00:00"
        )
        (seeds / "raw_customers.csv").write_text(customers)
        dbt.run("seed", "--full-refresh")
        dbt.run("snapshot")
        tally_build()
        history = [(r[0], r[2], r[-1] is None) for r in same_snapshot() if r[0] == 2]
        assert history == [(2, "free", False), (2, "pro", True)]
    finally:
        with psycopg.connect(info.conninfo(), autocommit=True) as conn:
            for s in (ours, f"{ours}_snapshots"):
                conn.execute(f'drop schema if exists "{s}" cascade')
