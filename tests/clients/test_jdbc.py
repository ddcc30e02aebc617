"""JDBC (pgjdbc), the driver inside DBeaver, Metabase, Tableau, DataGrip and every JVM app.

jdbc/JdbcCheck.java is compiled with javac against the system pgjdbc jar and run once per
module; it prints `key=value` lines (and `FAIL step: SQLSTATE message` for a step that threw),
which the tests below check step by step.

pgjdbc sends start-up parameters (extra_float_digits, DateStyle, client_encoding, ...),
uses the extended protocol for everything, switches to named server-side statements with
binary transfer after 5 executions, and implements DatabaseMetaData.getTables / getColumns /
getPrimaryKeys as large pg_catalog queries (pg_class, pg_namespace, pg_attribute, pg_type,
pg_description, pg_attrdef, format_type, ...).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

JAR = Path(os.environ.get("PGJDBC_JAR", "/usr/share/java/postgresql.jar"))
SOURCE = Path(__file__).parent / "jdbc" / "JdbcCheck.java"

TABLE_DDL = (
    "id bigint, name text, amount numeric(10,2), flag boolean, day date, ts timestamp, "
    "tstz timestamptz, v varchar, j jsonb, u uuid, tags text[], d double precision, n integer"
)


class Output:
    """The program's output, split into steps and key=value lines."""

    def __init__(self, text: str, returncode: int):
        self.text = text
        self.returncode = returncode
        self.lines = text.splitlines()

    def values(self, key: str) -> list[str]:
        """Every value printed under `key`, in order."""
        prefix = key + "="
        return [line[len(prefix):] for line in self.lines if line.startswith(prefix)]

    def value(self, key: str) -> str:
        vals = self.values(key)
        assert len(vals) == 1, f"expected one {key}= line, got {vals}\n{self.text}"
        return vals[0]

    def rows(self, key: str) -> list[list[str]]:
        return [v.split("|") for v in self.values(key)]

    def assert_ok(self, step: str) -> None:
        """The step ran to the end (no exception); on failure show the FAIL line."""
        fails = [line for line in self.lines if line.startswith(f"FAIL {step}:") or line.startswith("FAIL connect:")]
        assert not fails, "\n".join(fails)
        assert f"OK {step}" in self.lines, f"step {step} did not run\n{self.text}"


@pytest.fixture(scope="module")
def jdbc(info, psql, tmp_path_factory):
    """Compiles JdbcCheck, creates its table and view in public, runs it once, drops them."""
    assert JAR.exists(), f"{JAR} missing: apt-get install libpostgresql-jdbc-java"
    assert shutil.which("javac") and shutil.which("java"), "a JDK (javac, java) is needed"
    classes = tmp_path_factory.mktemp("jdbc")
    subprocess.run(
        ["javac", "-cp", str(JAR), "-d", str(classes), str(SOURCE)],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )

    suffix = uuid.uuid4().hex[:8]
    table, view = f"t_jdbc_{suffix}", f"v_jdbc_{suffix}"
    psql.sql(f"create table public.{table} ({TABLE_DDL})")
    psql.sql(f"create view public.{view} as select id, name from public.{table}")
    try:
        proc = subprocess.run(
            ["java", "-cp", f"{classes}{os.pathsep}{JAR}", "JdbcCheck", info.jdbc_url(), table, view],
            capture_output=True,
            text=True,
            timeout=110,
        )
        out = Output(proc.stdout + proc.stderr, proc.returncode)
        out.table, out.view = table, view
        yield out
    finally:
        psql.run("-q", "-c", f"drop view if exists public.{view}", check=False)
        psql.run("-q", "-c", f"drop table if exists public.{table}", check=False)


def test_connect_and_database_metadata(jdbc, info, is_tally):
    """pgjdbc connects (start-up parameters, ParameterStatus) and DatabaseMetaData reports
    PostgreSQL with the server version; user, catalog (database) and current schema."""
    jdbc.assert_ok("metadata")
    name, version = jdbc.value("product").split("|")
    assert name == "PostgreSQL"
    assert int(jdbc.value("major")) >= 10
    assert jdbc.value("identifier_quote") == '"'
    assert jdbc.value("user") == info.user
    assert jdbc.value("catalog") == info.dbname
    assert jdbc.value("schema") == "public"
    if is_tally:
        assert version == "16.6"


def test_prepared_statement_insert(jdbc):
    """A PreparedStatement INSERT with long/String/BigDecimal/boolean/Date/Timestamp
    parameters, executed 7 times (unnamed, then named server-side statement with binary
    parameters), reports 1 row each time."""
    jdbc.assert_ok("prepared_insert")
    assert jdbc.values("insert_count") == ["1"] * 7


def test_batch_insert(jdbc):
    """addBatch/executeBatch sends several Bind/Execute in one round trip; each counts 1."""
    jdbc.assert_ok("batch_insert")
    assert jdbc.value("batch_counts") == "1,1,1"


def test_prepared_statement_select(jdbc):
    """A parameterised SELECT executed 6 times returns the same rows each time, with values
    decoded correctly (binary transfer from the 5th run), and ResultSetMetaData gives
    PostgreSQL type names and java.sql.Types codes."""
    jdbc.assert_ok("prepared_select")
    assert [jdbc.value(f"select_rows_run{i}") for i in range(1, 7)] == ["5"] * 6
    assert jdbc.rows("row") == [
        ["2", "name 2", "2.25", "true", "2024-01-02", "2024-01-02 10:30:00.0"],
        ["4", "name 4", "4.25", "true", "2024-01-04", "2024-01-04 10:30:00.0"],
        ["5", "name 5", "5.25", "false", "2024-01-05", "2024-01-05 10:30:00.0"],
        ["6", "name 6", "6.25", "true", "2024-01-06", "2024-01-06 10:30:00.0"],
        ["7", "name 7", "7.25", "false", "2024-01-07", "2024-01-07 10:30:00.0"],
    ]
    # label | type name | java.sql.Types | base table | nullable (1 = columnNullable)
    assert jdbc.rows("rsmeta") == [
        ["id", "int8", "-5", jdbc.table, "1"],
        ["name", "text", "12", jdbc.table, "1"],
        ["amount", "numeric", "2", jdbc.table, "1"],
        ["flag", "bool", "-7", jdbc.table, "1"],
        ["day", "date", "91", jdbc.table, "1"],
        ["ts", "timestamp", "93", jdbc.table, "1"],
    ]


def test_get_schemas(jdbc):
    """getSchemas lists public (pg_namespace query used by schema browsers)."""
    jdbc.assert_ok("get_schemas")
    assert "public" in jdbc.values("schema_row")


def test_get_tables(jdbc):
    """getTables(null, "public", "%", {"TABLE","VIEW"}) lists our table as TABLE and our view
    as VIEW, like DBeaver's and Metabase's navigators."""
    jdbc.assert_ok("get_tables")
    rows = jdbc.rows("table_row")
    assert ["public", jdbc.table, "TABLE", "null"] in rows, rows
    assert ["public", jdbc.view, "VIEW", "null"] in rows, rows
    assert all(r[0] == "public" and r[2] in ("TABLE", "VIEW") for r in rows), rows
    jdbc.assert_ok("get_tables_by_name")
    assert jdbc.rows("view_row") == [["public", jdbc.view, "VIEW"]]


def test_get_columns(jdbc):
    """getColumns(null, "public", table, "%") gives each column in order with pgjdbc's type
    name, java.sql.Types code, size and scale (numeric(10,2) → 10, 2), nullability."""
    jdbc.assert_ok("get_columns")
    # name | TYPE_NAME | DATA_TYPE | COLUMN_SIZE | DECIMAL_DIGITS | NULLABLE | ORDINAL | IS_NULLABLE | IS_AUTOINCREMENT
    assert jdbc.rows("column") == [
        ["id", "int8", "-5", "19", "0", "1", "1", "YES", "NO"],
        ["name", "text", "12", "2147483647", "0", "1", "2", "YES", "NO"],
        ["amount", "numeric", "2", "10", "2", "1", "3", "YES", "NO"],
        ["flag", "bool", "-7", "1", "0", "1", "4", "YES", "NO"],
        ["day", "date", "91", "13", "0", "1", "5", "YES", "NO"],
        ["ts", "timestamp", "93", "29", "6", "1", "6", "YES", "NO"],
        ["tstz", "timestamptz", "93", "35", "6", "1", "7", "YES", "NO"],
        ["v", "varchar", "12", "2147483647", "0", "1", "8", "YES", "NO"],
        ["j", "jsonb", "1111", "2147483647", "0", "1", "9", "YES", "NO"],
        ["u", "uuid", "1111", "2147483647", "0", "1", "10", "YES", "NO"],
        ["tags", "_text", "2003", "2147483647", "0", "1", "11", "YES", "NO"],
        ["d", "float8", "8", "17", "17", "1", "12", "YES", "NO"],
        ["n", "int4", "4", "10", "0", "1", "13", "YES", "NO"],
    ]
    jdbc.assert_ok("get_view_columns")
    assert jdbc.rows("view_column") == [["id", "int8", "-5"], ["name", "text", "12"]]


def test_get_primary_keys(jdbc):
    """getPrimaryKeys (pg_constraint/pg_index query Metabase runs on sync) answers with no rows
    for a table without a key."""
    jdbc.assert_ok("get_primary_keys")
    assert jdbc.value("pk_count") == "0"


def test_transaction_and_error_recovery(jdbc):
    """setAutoCommit(false) + rollback discards an insert; a missing table raises SQLSTATE
    42P01 and after rollback the connection works again."""
    jdbc.assert_ok("transaction_rollback")
    assert jdbc.value("after_rollback") == "0"
    jdbc.assert_ok("error_recovery")
    assert jdbc.value("error_sqlstate") == "42P01"
    assert jdbc.value("after_error_count") == "10"


def test_program_exit_status(jdbc):
    """The whole program ran without any failing step."""
    assert jdbc.returncode == 0, jdbc.text
