"""asyncpg, the fast asyncio driver (FastAPI, many data services).

asyncpg is stricter than libpq-based drivers: it prepares every statement (Parse + Describe),
encodes parameters in binary using the parameter types the server reports in
ParameterDescription, asks for binary results, and for any type OID it has no built-in codec
for (e.g. bigint[]) it runs its type introspection query against pg_type. Cursors use protocol
portals fetched n rows at a time (Execute with a row limit, PortalSuspended).

Each test runs its coroutine with asyncio.run; the helper bounds it with a timeout so a server
that never answers fails the test instead of hanging the suite.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import uuid
from decimal import Decimal

import asyncpg
import pytest

UTC = dt.timezone.utc


def run(coro):
    """Runs a coroutine to completion, failing if it does not finish within 60 seconds."""
    return asyncio.run(asyncio.wait_for(coro, timeout=60))


async def connect(info) -> asyncpg.Connection:
    return await asyncpg.connect(
        host=info.host,
        port=info.port,
        user=info.user,
        database=info.dbname,
        password=info.password,
        timeout=10,
    )


def test_connect_and_version(info, is_tally):
    """Connect (start-up, ParameterStatus), read the server version asyncpg parsed from
    server_version, and run a first statement."""

    async def main():
        conn = await connect(info)
        try:
            version = conn.get_server_version()
            assert version.major >= 10
            if is_tally:
                # asyncpg reads "16.6" as major 16, micro 6 (minor is 0 since PostgreSQL 10).
                assert (version.major, version.minor, version.micro) == (16, 0, 6)
            assert await conn.fetchval("select 1") == 1
            assert await conn.fetchval("select current_database()") == info.dbname
        finally:
            await conn.close()

    run(main())


def test_fetch_with_typed_params(info, schema):
    """fetch/fetchrow/fetchval with $n parameters whose types come from casts or from the
    table column they are compared with (ParameterDescription); executemany inserts."""

    async def main():
        conn = await connect(info)
        try:
            rec = await conn.fetchrow("select $1::bigint + 1 as a, $2::text || $3::text as b", 41, "x", "y")
            assert (rec["a"], rec["b"]) == (42, "xy")

            await conn.execute(f"create table {schema}.t (id bigint, name text, score double precision)")
            await conn.executemany(
                f"insert into {schema}.t (id, name, score) values ($1, $2, $3)",
                [(i, f"name {i}", i / 2) for i in range(20)],
            )
            rows = await conn.fetch(
                f"select id, name, score from {schema}.t where id >= $1 and name <> $2 order by id", 15, "name 16"
            )
            assert [tuple(r) for r in rows] == [(i, f"name {i}", i / 2) for i in (15, 17, 18, 19)]
            assert await conn.fetchval(f"select count(*) from {schema}.t where score > $1", 5.0) == 9
        finally:
            await conn.close()

    run(main())


# (SQL type, Python value) pairs: each value must survive a binary round trip unchanged.
SCALARS = [
    ("smallint", -32768),
    ("integer", 2_147_483_647),
    ("bigint", -9_223_372_036_854_775_808),
    ("double precision", 1.0e-300),
    ("real", 0.5),
    ("numeric(12,3)", Decimal("-123456789.125")),
    ("numeric", Decimal("0.000000001")),
    ("text", "päivää 'x' \"y\" \\ \t"),
    ("varchar", "v"),
    ("boolean", True),
    ("boolean", False),
    ("date", dt.date(1999, 12, 31)),
    ("timestamp", dt.datetime(2020, 2, 29, 23, 59, 59, 999999)),
    ("timestamptz", dt.datetime(2020, 2, 29, 23, 59, 59, 1, tzinfo=UTC)),
    ("json", '{"a": [1, 2, {"b": null}]}'),
    ("jsonb", '{"a": [1, 2, {"b": null}]}'),
    ("uuid", uuid.UUID("0e4f3e5a-8b9c-4d2e-a1f0-123456789abc")),
]


def test_all_scalar_types(info):
    """`select $1::<type>` for every supported scalar type: binary parameter in, binary result
    out, same Python value back; NULL of every type comes back as None."""

    async def main():
        conn = await connect(info)
        try:
            for sqltype, value in SCALARS:
                got = await conn.fetchval(f"select $1::{sqltype}", value)
                assert got == value, sqltype
                assert await conn.fetchval(f"select $1::{sqltype}", None) is None, sqltype
        finally:
            await conn.close()

    run(main())


def test_table_of_all_types(info, schema):
    """INSERT a row of every type with untyped $n parameters (the server must report the
    column types in ParameterDescription so asyncpg encodes them right), then read it back."""
    cols = [(f"c{i}", sqltype, value) for i, (sqltype, value) in enumerate(SCALARS)]

    async def main():
        conn = await connect(info)
        try:
            ddl = ", ".join(f"{name} {sqltype}" for name, sqltype, _ in cols)
            await conn.execute(f"create table {schema}.w ({ddl})")
            placeholders = ", ".join(f"${i + 1}" for i in range(len(cols)))
            status = await conn.execute(f"insert into {schema}.w values ({placeholders})", *[v for _, _, v in cols])
            assert status == "INSERT 0 1"
            row = await conn.fetchrow(f"select * from {schema}.w")
            assert list(row.keys()) == [name for name, _, _ in cols]
            assert list(row.values()) == [v for _, _, v in cols]
        finally:
            await conn.close()

    run(main())


def test_array_parameters(info):
    """Array parameters `$1::bigint[]` and `$1::text[]`, binary encoded, including NULL
    elements, empty arrays and text that needs quoting in the text form. bigint[] has no
    built-in codec in asyncpg: it runs its pg_type introspection query first."""

    async def main():
        conn = await connect(info)
        try:
            assert await conn.fetchval("select $1::bigint[]", [1, -2, 3_000_000_000]) == [1, -2, 3_000_000_000]
            assert await conn.fetchval("select $1::bigint[]", [1, None]) == [1, None]
            assert await conn.fetchval("select $1::bigint[]", []) == []
            texts = ["a", "b,c", 'q"uote', "", None, "{brace}"]
            assert await conn.fetchval("select $1::text[]", texts) == texts
            assert await conn.fetchval("select cardinality($1::text[])", texts) == len(texts)
        finally:
            await conn.close()

    run(main())


def test_array_parameter_with_any(info, schema):
    """The idiom arrays are passed for: `where id = any($1::bigint[])`."""

    async def main():
        conn = await connect(info)
        try:
            await conn.execute(f"create table {schema}.a (id bigint, tag text)")
            await conn.execute(f"insert into {schema}.a values (1, 'x'), (2, 'y'), (3, 'z')")
            rows = await conn.fetch(f"select id from {schema}.a where id = any($1::bigint[]) order by id", [1, 3, 99])
            assert [r["id"] for r in rows] == [1, 3]
            rows = await conn.fetch(f"select id from {schema}.a where tag = any($1::text[]) order by id", ["y"])
            assert [r["id"] for r in rows] == [2]
        finally:
            await conn.close()

    run(main())


def test_array_columns(info, schema):
    """text[] and bigint[] table columns read back as Python lists in binary format."""

    async def main():
        conn = await connect(info)
        try:
            await conn.execute(f"create table {schema}.arr (id bigint, tags text[], nums bigint[])")
            await conn.execute(f"insert into {schema}.arr values ($1, $2, $3)", 1, ["a", "b"], [10, 20])
            await conn.execute(f"insert into {schema}.arr values (2, array['c'], array[30, null]::bigint[])")
            rows = await conn.fetch(f"select id, tags, nums from {schema}.arr order by id")
            assert [tuple(r) for r in rows] == [(1, ["a", "b"], [10, 20]), (2, ["c"], [30, None])]
        finally:
            await conn.close()

    run(main())


def test_prepared_statement_introspection(info):
    """conn.prepare(): a named prepared statement whose parameter and result types (from
    ParameterDescription and RowDescription) are reported, executed repeatedly."""

    async def main():
        conn = await connect(info)
        try:
            stmt = await conn.prepare("select $1::bigint * 2 as doubled, $2::text as label")
            assert [t.name for t in stmt.get_parameters()] == ["int8", "text"]
            assert [(a.name, a.type.name) for a in stmt.get_attributes()] == [("doubled", "int8"), ("label", "text")]
            for i in range(5):
                assert tuple(await stmt.fetchrow(i, f"l{i}")) == (2 * i, f"l{i}")
        finally:
            await conn.close()

    run(main())


def test_cursor_iteration_with_prefetch(info, schema, psql):
    """`async for` over conn.cursor(..., prefetch=n) inside a transaction: a named portal
    fetched n rows at a time (Execute with a row limit until CommandComplete; PortalSuspended
    in between). Also fetch(n)/fetchrow() on an explicit cursor. Every row, in order."""
    values = ", ".join(f"({i}, 'r{i}')" for i in range(500))
    psql.sql(f"create table {schema}.big (id bigint, label text); insert into {schema}.big values {values}")

    async def main():
        conn = await connect(info)
        try:
            async with conn.transaction():
                assert conn.is_in_transaction()
                seen = []
                async for rec in conn.cursor(
                    f"select id, label from {schema}.big where id >= $1 order by id", 5, prefetch=50
                ):
                    seen.append((rec["id"], rec["label"]))
                assert seen == [(i, f"r{i}") for i in range(5, 500)]

                cur = await conn.cursor(f"select id from {schema}.big order by id")
                assert [r["id"] for r in await cur.fetch(3)] == [0, 1, 2]
                assert (await cur.fetchrow())["id"] == 3
                assert [r["id"] for r in await cur.fetch(2)] == [4, 5]
        finally:
            await conn.close()

    run(main())


def test_transaction_rollback_and_errors(info, schema):
    """`async with conn.transaction()` rolls back DDL and DML when the block raises; a server
    error maps to the SQLSTATE-specific exception and leaves the connection usable."""

    async def main():
        conn = await connect(info)
        try:
            with pytest.raises(asyncpg.exceptions.UndefinedTableError) as exc:
                async with conn.transaction():
                    await conn.execute(f"create table {schema}.tx (id bigint)")
                    await conn.execute(f"insert into {schema}.tx values (1)")
                    await conn.execute(f"select * from {schema}.missing")
            assert exc.value.sqlstate == "42P01"
            assert not conn.is_in_transaction()
            n = await conn.fetchval(
                "select count(*) from information_schema.tables where table_schema = $1 and table_name = 'tx'",
                schema,
            )
            assert n == 0
            assert await conn.fetchval("select $1::int + 1", 1) == 2
        finally:
            await conn.close()

    run(main())


def test_copy_records_to_table(info, schema, is_tally):
    """copy_records_to_table streams rows with COPY ... FROM STDIN (FORMAT binary). On
    PostgreSQL the rows load. A server without binary COPY must refuse it cleanly with SQLSTATE
    0A000 (feature_not_supported) naming binary COPY, and stay usable; then the rows are absent.
    (asyncpg only uses binary COPY for this call.)"""
    records = [(1, "one", Decimal("1.50")), (2, None, Decimal("-2.25")), (3, "three", None)]

    async def main():
        conn = await connect(info)
        try:
            await conn.execute(f"create table {schema}.cp (id bigint, name text, amount numeric(10,2))")
            try:
                status = await conn.copy_records_to_table("cp", schema_name=schema, records=records)
            except asyncpg.exceptions.FeatureNotSupportedError as e:
                assert is_tally, "PostgreSQL supports binary COPY"
                assert e.sqlstate == "0A000"
                assert "binary" in str(e).lower(), str(e)
                assert await conn.fetchval(f"select count(*) from {schema}.cp") == 0
            else:
                assert status == "COPY 3"
                rows = await conn.fetch(f"select id, name, amount from {schema}.cp order by id")
                assert [tuple(r) for r in rows] == records
            assert await conn.fetchval("select 1") == 1
        finally:
            await conn.close()

    run(main())


def test_copy_text_and_csv(info, schema, tmp_path):
    """copy_to_table from a CSV file (COPY FROM STDIN, csv with header), copy_from_table and
    copy_from_query (COPY ... TO STDOUT in text and csv) produce PostgreSQL's exact bytes."""
    src = tmp_path / "in.csv"
    src.write_text('id,name\n1,alpha\n2,"b,c"\n3,\n')

    async def main():
        conn = await connect(info)
        try:
            await conn.execute(f"create table {schema}.cc (id bigint, name text)")
            status = await conn.copy_to_table("cc", schema_name=schema, source=str(src), format="csv", header=True)
            assert status == "COPY 3"

            out = io.BytesIO()
            status = await conn.copy_from_query(
                f"select id, name from {schema}.cc where id >= 2 order by id", output=out, format="csv"
            )
            assert status == "COPY 2"
            assert out.getvalue() == b'2,"b,c"\n3,\n'

            out = io.BytesIO()
            await conn.copy_from_table("cc", schema_name=schema, output=out, format="text")
            assert sorted(out.getvalue().splitlines()) == [b"1\talpha", b"2\tb,c", b"3\t\\N"]
        finally:
            await conn.close()

    run(main())


def test_copy_from_query_with_args(info, schema):
    """copy_from_query with arguments: asyncpg inlines them itself before sending COPY, by
    preparing the query (ParameterDescription) and running
    `SELECT quote_literal($1::"pg_catalog"."int8"::text)` with schema-qualified, quoted type
    names."""

    async def main():
        conn = await connect(info)
        try:
            await conn.execute(f"create table {schema}.q (id bigint, name text)")
            await conn.execute(f"insert into {schema}.q values (1, 'a'), (2, 'b'), (3, 'c')")
            out = io.BytesIO()
            status = await conn.copy_from_query(
                f"select id, name from {schema}.q where id >= $1 and name <> $2 order by id",
                2,
                "c",
                output=out,
                format="csv",
                header=True,
            )
            assert status == "COPY 1"
            assert out.getvalue() == b"id,name\n2,b\n"
        finally:
            await conn.close()

    run(main())
