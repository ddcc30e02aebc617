"""SQLAlchemy 2 (psycopg driver) and pandas, the Python data stack.

On first connect SQLAlchemy's PostgreSQL dialect runs its own start-up queries (version(),
current_schema(), standard_conforming_strings, transaction isolation, a TypeInfo lookup for
hstore). Its Inspector reflects through long pg_catalog queries (pg_class, pg_namespace,
pg_attribute with format_type and pg_get_expr, pg_constraint, pg_index, ...). pandas builds on
both: read_sql_table reflects the table, to_sql checks has_table, emits CREATE TABLE with
SQLAlchemy's type names (BIGINT, FLOAT(53), TEXT, BOOLEAN, TIMESTAMP WITHOUT TIME ZONE) and
batched multi-row INSERTs.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pandas as pd
import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.pool import NullPool


@pytest.fixture(scope="module")
def engine(info):
    """An engine on the server under test. NullPool: every connect() is a real new session,
    so no pooled connection keeps a transaction (and locks) open between tests."""
    eng = sa.create_engine(info.url("postgresql+psycopg"), poolclass=NullPool)
    yield eng
    eng.dispose()


def ddl(engine, *statements: str) -> None:
    """Runs statements in one transaction (BEGIN ... COMMIT)."""
    with engine.begin() as c:
        for s in statements:
            c.execute(sa.text(s))


def test_engine_connect(engine, is_tally):
    """create_engine + connect: the dialect's start-up queries succeed, it parses the server
    version out of version(), finds the default schema and runs a bound query."""
    with engine.connect() as c:
        assert c.execute(sa.text("select :x + 1"), {"x": 41}).scalar() == 42
        assert c.dialect.default_schema_name == "public"
        assert c.dialect.server_version_info >= (10,)
        if is_tally:
            assert c.dialect.server_version_info[:2] == (16, 6)


def test_inspect_schema_table_and_view_names(engine, schema):
    """Inspector: get_schema_names lists the new schema (not pg_catalog; SQLAlchemy does list
    information_schema),
    get_table_names only its tables, get_view_names only its views; has_table agrees."""
    ddl(
        engine,
        f"create table {schema}.orders (id bigint, total double precision)",
        f"create table {schema}.customers (id bigint, name text)",
        f"create view {schema}.big_orders as select id from {schema}.orders where total > 100",
    )
    insp = sa.inspect(engine)
    schemas = insp.get_schema_names()
    assert schema in schemas and "public" in schemas
    assert "pg_catalog" not in schemas and not any(s.startswith("pg_toast") for s in schemas)
    assert sorted(insp.get_table_names(schema=schema)) == ["customers", "orders"]
    assert insp.get_view_names(schema=schema) == ["big_orders"]
    assert insp.has_table("orders", schema=schema)
    assert not insp.has_table("nothing", schema=schema)
    assert "select" in insp.get_view_definition("big_orders", schema=schema).lower()


def test_inspect_columns_and_types(engine, schema):
    """get_columns returns every column in order with the SQLAlchemy type PostgreSQL's
    format_type() name maps to (incl. numeric precision/scale, timestamp with/without time
    zone, json/jsonb, uuid and arrays) and nullable=True."""
    ddl(
        engine,
        f"""create table {schema}.wide (
            id bigint, name text, created timestamp, amount numeric(10,2), flag boolean,
            n integer, small smallint, d double precision, r real, day date, ts timestamptz,
            v varchar, j json, jb jsonb, u uuid, tags text[], nums bigint[])""",
    )
    cols = sa.inspect(engine).get_columns("wide", schema=schema)
    assert [c["name"] for c in cols] == [
        "id", "name", "created", "amount", "flag", "n", "small", "d", "r", "day", "ts", "v", "j", "jb", "u",
        "tags", "nums",
    ]  # fmt: skip
    t = {c["name"]: c["type"] for c in cols}
    assert type(t["id"]) is pg.BIGINT
    assert type(t["name"]) is pg.TEXT
    assert type(t["created"]) is pg.TIMESTAMP and not t["created"].timezone
    assert type(t["amount"]) is pg.NUMERIC and (t["amount"].precision, t["amount"].scale) == (10, 2)
    assert type(t["flag"]) is pg.BOOLEAN
    assert type(t["n"]) is pg.INTEGER
    assert type(t["small"]) is pg.SMALLINT
    assert type(t["d"]) is pg.DOUBLE_PRECISION
    assert type(t["r"]) is pg.REAL
    assert type(t["day"]) is pg.DATE
    assert type(t["ts"]) is pg.TIMESTAMP and t["ts"].timezone
    assert type(t["v"]) is pg.VARCHAR
    assert type(t["j"]) is pg.JSON
    assert type(t["jb"]) is pg.JSONB
    assert type(t["u"]) is pg.UUID
    assert type(t["tags"]) is pg.ARRAY and type(t["tags"].item_type) is pg.TEXT
    assert type(t["nums"]) is pg.ARRAY and type(t["nums"].item_type) is pg.BIGINT
    assert all(c["nullable"] for c in cols)
    assert all(c["default"] is None for c in cols)


def test_inspect_view_columns(engine, schema):
    """get_columns on a view gives the view's output columns and types."""
    ddl(
        engine,
        f"create table {schema}.base (id bigint, name text, price numeric(10,2))",
        f"create view {schema}.named as select id, name from {schema}.base",
    )
    cols = sa.inspect(engine).get_columns("named", schema=schema)
    assert [(c["name"], type(c["type"])) for c in cols] == [("id", pg.BIGINT), ("name", pg.TEXT)]


def test_inspect_constraints_and_indexes(engine, schema):
    """Tables without keys: get_pk_constraint has no columns, get_indexes, get_foreign_keys,
    get_unique_constraints and get_check_constraints are empty (pg_constraint / pg_index
    queries answer with no rows rather than an error)."""
    ddl(engine, f"create table {schema}.plain (id bigint, name text)")
    insp = sa.inspect(engine)
    assert insp.get_pk_constraint("plain", schema=schema)["constrained_columns"] == []
    assert insp.get_indexes("plain", schema=schema) == []
    assert insp.get_foreign_keys("plain", schema=schema) == []
    assert insp.get_unique_constraints("plain", schema=schema) == []
    assert insp.get_check_constraints("plain", schema=schema) == []


def test_metadata_reflect(engine, schema):
    """MetaData.reflect (what Alembic autogenerate and admin tools do) reflects tables and
    views of a schema in one go, then a Core select built from the reflected Table runs."""
    ddl(
        engine,
        f"create table {schema}.a (id bigint, label text)",
        f"insert into {schema}.a values (1, 'x'), (2, 'y')",
        f"create view {schema}.av as select id from {schema}.a",
    )
    md = sa.MetaData()
    md.reflect(engine, schema=schema, views=True)
    assert sorted(md.tables) == [f"{schema}.a", f"{schema}.av"]
    a = md.tables[f"{schema}.a"]
    with engine.connect() as c:
        rows = c.execute(sa.select(a.c.label).where(a.c.id > sa.bindparam("m")).order_by(a.c.id), {"m": 1}).all()
    assert rows == [("y",)]


def test_orm_style_core_roundtrip(engine, schema):
    """Core Table defined in Python: metadata.create_all (CREATE TABLE with SQLAlchemy's DDL
    type names), insert many rows (insertmanyvalues batches), select with bound parameters,
    update and delete with row counts."""
    md = sa.MetaData(schema=schema)
    t = sa.Table(
        "people",
        md,
        sa.Column("id", sa.BigInteger),
        sa.Column("name", sa.String),
        sa.Column("score", sa.Float),
        sa.Column("joined", sa.DateTime),
        sa.Column("active", sa.Boolean),
        sa.Column("balance", sa.Numeric(10, 2)),
    )
    md.create_all(engine)
    rows = [
        {
            "id": i,
            "name": f"p{i}",
            "score": i * 1.5,
            "joined": dt.datetime(2024, 1, 1 + i),
            "active": i % 2 == 0,
            "balance": Decimal(i) / 4,
        }
        for i in range(10)
    ]
    with engine.begin() as c:
        c.execute(t.insert(), rows)  # rowcount is -1 for insertmanyvalues batches, on PG too
    with engine.begin() as c:
        got = c.execute(sa.select(t).where(t.c.active.is_(True), t.c.score >= 3).order_by(t.c.id)).mappings().all()
        assert [r["id"] for r in got] == [2, 4, 6, 8]
        assert got[0]["joined"] == dt.datetime(2024, 1, 3) and got[0]["balance"] == Decimal("0.50")
        assert c.execute(t.update().where(t.c.id < 3).values(name="low")).rowcount == 3
        assert c.execute(t.delete().where(t.c.id >= 8)).rowcount == 2
    with engine.connect() as c:
        assert c.execute(sa.select(sa.func.count()).select_from(t)).scalar() == 8
        assert c.execute(sa.select(sa.func.sum(t.c.balance))).scalar() == Decimal("7.00")
        assert c.execute(sa.select(t.c.name).where(t.c.id == 1)).scalar() == "low"


def test_pandas_read_sql_with_params(engine, schema):
    """pandas.read_sql with a text() query and bound parameters returns the right frame."""
    ddl(
        engine,
        f"create table {schema}.sales (id bigint, region text, amount double precision)",
        f"insert into {schema}.sales values (1, 'north', 10.5), (2, 'south', 20), (3, 'north', 30.25)",
    )
    with engine.connect() as c:
        df = pd.read_sql(
            sa.text(f"select id, region, amount from {schema}.sales where region = :r and amount > :m order by id"),
            c,
            params={"r": "north", "m": 5},
        )
    assert list(df.columns) == ["id", "region", "amount"]
    assert df.to_dict("records") == [
        {"id": 1, "region": "north", "amount": 10.5},
        {"id": 3, "region": "north", "amount": 30.25},
    ]
    assert str(df["id"].dtype) == "int64"


def test_pandas_read_sql_table(engine, schema):
    """pandas.read_sql_table reflects the table (SQLAlchemy Inspector) and reads every row with
    proper dtypes (timestamps as datetime64)."""
    ddl(
        engine,
        f"create table {schema}.events (id bigint, kind text, at timestamp)",
        f"insert into {schema}.events values (1, 'a', '2024-01-01 10:00:00'), (2, 'b', '2024-01-02 11:30:00')",
    )
    df = pd.read_sql_table("events", engine, schema=schema).sort_values("id").reset_index(drop=True)
    assert list(df.columns) == ["id", "kind", "at"]
    assert df["id"].tolist() == [1, 2]
    assert df["kind"].tolist() == ["a", "b"]
    assert pd.api.types.is_datetime64_any_dtype(df["at"])
    assert df["at"].tolist() == [pd.Timestamp("2024-01-01 10:00:00"), pd.Timestamp("2024-01-02 11:30:00")]


def test_pandas_to_sql_replace_roundtrip(engine, schema):
    """DataFrame.to_sql creates a table from a frame, `if_exists='replace'` drops and recreates
    it with new data, `if_exists='append'` adds rows; reading it back gives the same frame."""
    first = pd.DataFrame({"id": [1, 2], "name": ["a", "b"], "x": [0.5, 1.5]})
    first.to_sql("frame", engine, schema=schema, index=False)
    assert pd.read_sql_table("frame", engine, schema=schema)["id"].sort_values().tolist() == [1, 2]

    second = pd.DataFrame(
        {
            "id": [10, 20, 30],
            "name": ["x", None, "z"],
            "x": [1.25, None, -3.0],
            "flag": [True, False, True],
            "at": pd.to_datetime(["2024-01-01 00:00:00", "2024-06-30 12:00:00", "1999-12-31 23:59:59"]),
        }
    )
    second.to_sql("frame", engine, schema=schema, index=False, if_exists="replace")
    back = pd.read_sql_table("frame", engine, schema=schema).sort_values("id").reset_index(drop=True)
    assert list(back.columns) == ["id", "name", "x", "flag", "at"]
    assert back["id"].tolist() == [10, 20, 30]
    assert back["name"].tolist()[0::2] == ["x", "z"] and pd.isna(back["name"][1])
    assert back["x"].tolist()[0::2] == [1.25, -3.0] and pd.isna(back["x"][1])
    assert back["flag"].tolist() == [True, False, True]
    assert back["at"].tolist() == second["at"].tolist()

    cols = {c["name"]: type(c["type"]) for c in sa.inspect(engine).get_columns("frame", schema=schema)}
    assert cols == {
        "id": pg.BIGINT,
        "name": pg.TEXT,
        "x": pg.DOUBLE_PRECISION,
        "flag": pg.BOOLEAN,
        "at": pg.TIMESTAMP,
    }

    second.iloc[:1].to_sql("frame", engine, schema=schema, index=False, if_exists="append")
    with engine.connect() as c:
        assert c.execute(sa.text(f"select count(*) from {schema}.frame where id = 10")).scalar() == 2
