"""psycopg 3, the Python driver behind most Python tools (and SQLAlchemy's default for PG).

psycopg 3 uses the extended query protocol with server-side parameter binding for every
execute(): Parse with parameter type OIDs (0 = unknown for str and None), Bind with text or
binary parameters, Describe, Execute, Sync. These tests pin that path for every supported type,
binary results, prepared statements, executemany, transactions, errors, COPY and named
(server-side) cursors.
"""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

import psycopg
import pytest
from psycopg import errors, sql
from psycopg.types import TypeInfo
from psycopg.types.json import Json, Jsonb

UTC = dt.timezone.utc


# The connection fixtures take `schema` so that they are set up after it and closed before it
# is dropped: an open transaction would otherwise hold locks that block DROP SCHEMA.


@pytest.fixture
def conn(info, schema):
    """A psycopg connection in its default mode (implicit transactions, autocommit off)."""
    with psycopg.connect(info.conninfo()) as c:
        yield c


@pytest.fixture
def aconn(info, schema):
    """A psycopg connection in autocommit mode."""
    with psycopg.connect(info.conninfo(), autocommit=True) as c:
        yield c


def table_exists(c: psycopg.Connection, schema: str, table: str) -> bool:
    cur = c.execute(
        "select count(*) from information_schema.tables where table_schema = %s and table_name = %s",
        (schema, table),
    )
    return cur.fetchone()[0] == 1


# One row with a value of every supported type, and the table that holds it.
WIDE_DDL = """
create table {} (
    i8 bigint, i4 integer, i2 smallint, f8 double precision, f4 real, num numeric(12,3),
    t text, vc varchar, b boolean, d date, ts timestamp, tstz timestamptz,
    j json, jb jsonb, u uuid, ta text[], ia bigint[]
)"""
WIDE_ROW = (
    9_000_000_000,
    -7,
    3,
    2.5,
    0.25,
    Decimal("12345.678"),
    "héllo 'quoted' \"world\"",
    "varchar value",
    True,
    dt.date(2024, 2, 29),
    dt.datetime(2024, 2, 29, 13, 45, 1, 123456),
    dt.datetime(2024, 2, 29, 13, 45, 1, 500000, tzinfo=UTC),
    {"a": 1, "b": [True, None]},
    {"k": "v", "n": 2.5},
    uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
    ["x", "y,z", 'q"uote'],
    [1, -2, 3_000_000_000],
)


def insert_wide(c: psycopg.Connection, table: sql.Composable) -> None:
    row = list(WIDE_ROW)
    row[12] = Json(row[12])
    row[13] = Jsonb(row[13])
    c.execute(sql.SQL("insert into {} values (" + ", ".join(["%s"] * len(row)) + ")").format(table), row)
    c.execute(sql.SQL("insert into {} values (" + ", ".join(["%s"] * len(row)) + ")").format(table), [None] * len(row))


def test_connect_parameters(aconn, is_tally):
    """The start-up ParameterStatus messages psycopg relies on: server_version (psycopg's
    server_version number), client_encoding UTF8 (decoding), DateStyle ISO (date parsing),
    integer_datetimes, standard_conforming_strings (client-side quoting)."""
    info = aconn.info
    assert info.encoding == "utf-8"
    assert info.parameter_status("client_encoding") == "UTF8"
    assert info.parameter_status("DateStyle").startswith("ISO")
    assert info.parameter_status("integer_datetimes") == "on"
    assert info.parameter_status("standard_conforming_strings") == "on"
    assert info.parameter_status("TimeZone") is not None
    assert info.server_version >= 100000
    assert info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    if is_tally:
        assert info.server_version == 160006
        assert info.parameter_status("server_version") == "16.6"


def test_params_roundtrip_text_and_binary(aconn):
    """`select %s, ...` with Python values of many types, bound server-side as text (%s) and as
    binary (%b) parameters, returns the same values. str and None are sent with type 0
    (unknown) and must resolve to text like PostgreSQL does."""
    values = [
        42,
        -(2**40),
        1.25,
        Decimal("-12.340"),
        "text value",
        True,
        False,
        dt.date(2000, 1, 2),
        dt.datetime(2001, 2, 3, 4, 5, 6, 7000),
        dt.datetime(2001, 2, 3, 4, 5, 6, tzinfo=UTC),
        uuid.UUID("12345678-1234-5678-1234-567812345678"),
        [1, 2, 3],
    ]
    for placeholder in ("%s", "%b"):
        query = "select " + ", ".join([placeholder] * len(values))
        row = aconn.execute(query, values).fetchone()
        assert list(row) == values, placeholder
    assert aconn.execute("select %s", [None]).fetchone() == (None,)
    # A list of str is sent as an untyped array literal: it needs a cast to become text[].
    assert aconn.execute("select %s::text[]", [["a", "b c", None]]).fetchone() == (["a", "b c", None],)
    assert aconn.execute("select %s::text is null", [None]).fetchone() == (True,)
    assert aconn.execute("select %s, %s", [Jsonb({"a": [1, 2]}), Json([1, "x"])]).fetchone() == (
        {"a": [1, 2]},
        [1, "x"],
    )


def test_typed_params_in_expressions(aconn):
    """Parameters used inside expressions and WHERE clauses, with explicit casts, get the
    types the server infers (Parse with unknown OIDs, ParameterDescription)."""
    row = aconn.execute(
        "select %s::bigint * 2, %s::text || '!', %s::numeric(10,2) + 1, %s::date + 1, "
        "%s::timestamp < timestamp '2030-01-01'",
        [21, "hi", "1.005", dt.date(2024, 12, 31), dt.datetime(2024, 1, 1)],
    ).fetchone()
    assert row == (42, "hi!", Decimal("2.01"), dt.date(2025, 1, 1), True)
    cur = aconn.execute("select x from (values (1), (2), (3), (4)) as v(x) where x > %s and x <= %s order by x", [1, 3])
    assert cur.fetchall() == [(2,), (3,)]


def test_table_roundtrip_text_results(aconn, schema):
    """INSERT every supported type through parameters, then read it back with text-format
    results: each value converts back to the same Python value; the all-NULL row is all None."""
    table = sql.Identifier(schema, "wide")
    aconn.execute(sql.SQL(WIDE_DDL).format(table))
    insert_wide(aconn, table)
    rows = aconn.execute(sql.SQL("select * from {} order by i8 nulls last").format(table)).fetchall()
    assert rows[0] == WIDE_ROW
    assert rows[1] == (None,) * len(WIDE_ROW)


def test_table_roundtrip_binary_results(aconn, schema):
    """The same row read with binary-format results (`cursor(binary=True)`: every column is
    requested in binary in Bind) decodes to the same Python values: the server's binary
    encoders for int, float, numeric, text, bool, date, timestamps, json(b), uuid and arrays."""
    table = sql.Identifier(schema, "wide")
    aconn.execute(sql.SQL(WIDE_DDL).format(table))
    insert_wide(aconn, table)
    with aconn.cursor(binary=True) as cur:
        cur.execute(sql.SQL("select * from {} order by i8 nulls last").format(table))
        assert cur.pgresult.fformat(0) == 1, "server sent text although binary was requested"
        rows = cur.fetchall()
    assert rows[0] == WIDE_ROW
    assert rows[1] == (None,) * len(WIDE_ROW)


def test_result_column_description(aconn, schema):
    """RowDescription carries the right type OID for each column (what DB-API tools map to
    types) and the numeric(p,s) type modifier (cursor.description precision and scale)."""
    table = sql.Identifier(schema, "wide")
    aconn.execute(sql.SQL(WIDE_DDL).format(table))
    cur = aconn.execute(sql.SQL("select * from {}").format(table))
    assert [(d.name, d.type_code) for d in cur.description] == [
        ("i8", 20),  # int8
        ("i4", 23),  # int4
        ("i2", 21),  # int2
        ("f8", 701),  # float8
        ("f4", 700),  # float4
        ("num", 1700),  # numeric
        ("t", 25),  # text
        ("vc", 1043),  # varchar
        ("b", 16),  # bool
        ("d", 1082),  # date
        ("ts", 1114),  # timestamp
        ("tstz", 1184),  # timestamptz
        ("j", 114),  # json
        ("jb", 3802),  # jsonb
        ("u", 2950),  # uuid
        ("ta", 1009),  # _text
        ("ia", 1016),  # _int8
    ]
    num = cur.description[5]
    assert (num.precision, num.scale) == (12, 3)


def test_prepared_statements(aconn, schema):
    """`execute(..., prepare=True)` creates a named server-side prepared statement (Parse with
    a name, then Bind/Execute of that name) that gives right results with new parameters each
    time; automatic preparation after `prepare_threshold` executions also works."""
    aconn.execute(f"create table {schema}.p (id bigint, name text)")
    aconn.execute(f"insert into {schema}.p values (1, 'one'), (2, 'two'), (3, 'three')")
    query = f"select name from {schema}.p where id = %s"
    for i, name in [(1, "one"), (2, "two"), (3, "three"), (2, "two")]:
        assert aconn.execute(query, [i], prepare=True).fetchone() == (name,)

    aconn.prepare_threshold = 1
    insert = f"insert into {schema}.p values (%s, %s)"
    for i in range(10, 15):
        cur = aconn.execute(insert, [i, f"n{i}"])
        assert cur.rowcount == 1
    got = aconn.execute(f"select id, name from {schema}.p where id >= %s order by id", [10]).fetchall()
    assert got == [(i, f"n{i}") for i in range(10, 15)]


def test_executemany_insert(conn, schema):
    """`executemany` INSERT (pipelined Parse/Bind/Execute per row) inserts every row, rowcount
    is the total, and the rows are there after commit."""
    with conn.cursor() as cur:
        cur.execute(f"create table {schema}.m (id bigint, label text, amount numeric(10,2))")
        rows = [(i, f"label {i}", Decimal(i) / 4) for i in range(200)]
        cur.executemany(f"insert into {schema}.m (id, label, amount) values (%s, %s, %s)", rows)
        assert cur.rowcount == 200
    conn.commit()
    got = conn.execute(f"select count(*), sum(id), sum(amount) from {schema}.m").fetchone()
    assert got == (200, sum(range(200)), Decimal(sum(range(200))) / 4)
    assert conn.execute(f"select label from {schema}.m where id = %s", [123]).fetchone() == ("label 123",)


def test_dml_row_counts(aconn, schema):
    """UPDATE/DELETE report the affected rows in their command tags (cursor.rowcount)."""
    aconn.execute(f"create table {schema}.r (id bigint, v text)")
    cur = aconn.execute(f"insert into {schema}.r values (1, 'a'), (2, 'b'), (3, 'c')")
    assert cur.rowcount == 3
    assert aconn.execute(f"update {schema}.r set v = 'z' where id >= %s", [2]).rowcount == 2
    assert aconn.execute(f"delete from {schema}.r where v = %s", ["z"]).rowcount == 2
    assert aconn.execute(f"select id, v from {schema}.r").fetchall() == [(1, "a")]


def test_transaction_rollback_of_ddl(info, conn, schema):
    """CREATE TABLE and INSERT inside a transaction (psycopg's implicit BEGIN) disappear on
    rollback: the table does not exist afterwards, in this session or another."""
    conn.execute(f"create table {schema}.ghost (id bigint)")
    conn.execute(f"insert into {schema}.ghost values (1)")
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
    assert table_exists(conn, schema, "ghost")
    conn.rollback()
    assert not table_exists(conn, schema, "ghost")
    with psycopg.connect(info.conninfo(), autocommit=True) as other:
        assert not table_exists(other, schema, "ghost")
        with pytest.raises(errors.UndefinedTable):
            other.execute(f"select * from {schema}.ghost")


def test_transaction_commit_visible_to_others(info, conn, schema):
    """Work done in `with conn.transaction()` (BEGIN ... COMMIT) is invisible to another session
    before the commit and visible after it; DDL included."""
    with psycopg.connect(info.conninfo(), autocommit=True) as other:
        with conn.transaction():
            conn.execute(f"create table {schema}.kept (id bigint)")
            conn.execute(f"insert into {schema}.kept values (1), (2)")
            assert not table_exists(other, schema, "kept")
        assert table_exists(other, schema, "kept")
        assert other.execute(f"select count(*) from {schema}.kept").fetchone() == (2,)


def test_savepoint_rollback(conn, schema):
    """A nested `conn.transaction()` is a SAVEPOINT: an error inside it rolls back to the
    savepoint and the outer transaction goes on and commits its own work."""
    conn.execute(f"create table {schema}.sp (id bigint)")
    conn.commit()
    with conn.transaction():
        conn.execute(f"insert into {schema}.sp values (1)")
        with pytest.raises(errors.UndefinedTable):
            with conn.transaction():
                conn.execute(f"insert into {schema}.sp values (2)")
                conn.execute(f"select * from {schema}.nope")
        conn.execute(f"insert into {schema}.sp values (3)")
    assert conn.execute(f"select id from {schema}.sp order by id").fetchall() == [(1,), (3,)]


def test_error_then_rollback_keeps_connection_usable(conn, schema):
    """After an error inside a transaction the server refuses further statements with 25P02
    (in failed transaction) until ROLLBACK; after the rollback the same connection works."""
    with pytest.raises(errors.UndefinedTable) as exc:
        conn.execute(f"select * from {schema}.does_not_exist")
    assert exc.value.sqlstate == "42P01"
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
    with pytest.raises(errors.InFailedSqlTransaction) as exc:
        conn.execute("select 1")
    assert exc.value.sqlstate == "25P02"
    conn.rollback()
    assert conn.execute("select %s::int + 1", [1]).fetchone() == (2,)


def test_errors_map_to_sqlstate_classes(aconn, schema):
    """Errors carry the SQLSTATE PostgreSQL uses, so psycopg raises the specific exception
    class: syntax error 42601, missing column 42703, division by zero 22012, duplicate table
    42P07, bad cast 22P02. In autocommit the connection stays usable after each."""
    aconn.execute(f"create table {schema}.e (id bigint)")
    cases = [
        ("selec 1", errors.SyntaxError),
        (f"select nope from {schema}.e", errors.UndefinedColumn),
        ("select 1 / 0", errors.DivisionByZero),
        (f"create table {schema}.e (id bigint)", errors.DuplicateTable),
        ("select 'abc'::integer", errors.InvalidTextRepresentation),
    ]
    for query, cls in cases:
        with pytest.raises(cls):
            aconn.execute(query)
        assert aconn.execute("select 1").fetchone() == (1,)


def test_copy_in_rows_and_copy_out(aconn, schema):
    """`cursor.copy()`: COPY FROM STDIN with write_row (text format, psycopg escapes tabs,
    newlines, backslashes and NULL), then COPY (query) TO STDOUT read back row by row."""
    aconn.execute(f"create table {schema}.c (id bigint, name text, amount numeric(10,2), day date)")
    rows = [
        (1, "plain", Decimal("1.50"), dt.date(2024, 1, 1)),
        (2, "tab\tnew\nline back\\slash", Decimal("-2.00"), None),
        (3, None, None, dt.date(1999, 12, 31)),
    ]
    with aconn.cursor() as cur:
        with cur.copy(f"copy {schema}.c (id, name, amount, day) from stdin") as copy:
            for r in rows:
                copy.write_row(r)
        assert cur.rowcount == 3
    got = aconn.execute(f"select id, name, amount, day from {schema}.c order by id").fetchall()
    assert got == rows

    with aconn.cursor() as cur:
        with cur.copy(f"copy (select id, name, amount, day from {schema}.c order by id) to stdout") as copy:
            copy.set_types(["int8", "text", "numeric", "date"])
            out = list(copy.rows())
    assert out == rows


def test_copy_csv_blocks(aconn, schema):
    """COPY ... FROM STDIN (FORMAT csv, HEADER) fed raw blocks, and COPY table TO STDOUT
    (FORMAT csv) read as raw data, byte for byte as PostgreSQL writes it."""
    aconn.execute(f"create table {schema}.csv (id bigint, name text)")
    data = b'id,name\n1,"a,b"\n2,\n3,"say ""x"""\n'
    with aconn.cursor() as cur:
        with cur.copy(f"copy {schema}.csv from stdin with (format csv, header)") as copy:
            copy.write(data[:10])
            copy.write(data[10:])
        assert cur.rowcount == 3
    with aconn.cursor() as cur:
        chunks = []
        with cur.copy(f"copy (select * from {schema}.csv order by id) to stdout with (format csv)") as copy:
            for block in copy:
                chunks.append(bytes(block))
    assert b"".join(chunks) == b'1,"a,b"\n2,\n3,"say ""x"""\n'


def test_copy_error_is_reported(aconn, schema):
    """A malformed COPY row fails the COPY with a data error (22P02 bad integer) and the
    table stays empty; the connection remains usable."""
    aconn.execute(f"create table {schema}.bad (id bigint)")
    with pytest.raises(errors.InvalidTextRepresentation):
        with aconn.cursor() as cur:
            with cur.copy(f"copy {schema}.bad from stdin") as copy:
                copy.write(b"1\nnot a number\n")
    assert aconn.execute(f"select count(*) from {schema}.bad").fetchone() == (0,)


def test_named_server_side_cursor(info, schema, psql):
    """`conn.cursor(name='c')` is a server-side cursor: DECLARE c CURSOR FOR <query with bound
    parameters> inside a transaction, FETCH FORWARD n FROM c repeatedly while iterating, CLOSE.
    Tools use it to stream large results. Every row arrives, in order."""
    values = ", ".join(f"({i}, 'row {i}')" for i in range(1000))
    psql.sql(f"create table {schema}.big (id bigint, label text); insert into {schema}.big values {values}")
    with psycopg.connect(info.conninfo()) as c:
        with c.cursor(name="c") as cur:
            cur.itersize = 100
            cur.execute(f"select id, label from {schema}.big where id >= %s order by id", [10])
            assert [d.name for d in cur.description] == ["id", "label"]
            first = cur.fetchmany(5)
            assert first == [(i, f"row {i}") for i in range(10, 15)]
            rest = list(cur)
        assert [r[0] for r in rest] == list(range(15, 1000))
        c.commit()


def test_type_info_lookup(aconn):
    """psycopg's TypeInfo.fetch (used by SQLAlchemy and adapters to look up types by name:
    pg_type with to_regtype and ::regtype::text) finds built-in types and returns None for
    a type that does not exist."""
    info = TypeInfo.fetch(aconn, "jsonb")
    assert info is not None
    assert (info.name, info.oid, info.array_oid) == ("jsonb", 3802, 3807)
    info = TypeInfo.fetch(aconn, "uuid")
    assert (info.name, info.oid, info.array_oid) == ("uuid", 2950, 2951)
    assert TypeInfo.fetch(aconn, "no_such_type_here") is None
