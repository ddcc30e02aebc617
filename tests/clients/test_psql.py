"""psql, the client every PostgreSQL user reaches for first.

These tests drive the real ``psql`` binary. Its backslash commands (``\\d``, ``\\dt``, ``\\l``,
...) are canned catalog queries against pg_catalog, so they check that the catalog answers the
way psql expects, with the same type names PostgreSQL prints.
"""

from __future__ import annotations

import os
import pty
import select
import time

import pytest

# Every type the server supports, with the name PostgreSQL's format_type() gives it (what
# \d prints).
COLUMNS = [
    ("id", "bigint", "bigint"),
    ("name", "text", "text"),
    ("created", "timestamp", "timestamp without time zone"),
    ("amount", "numeric(10,2)", "numeric(10,2)"),
    ("flag", "boolean", "boolean"),
    ("n", "integer", "integer"),
    ("small", "smallint", "smallint"),
    ("d", "double precision", "double precision"),
    ("r", "real", "real"),
    ("day", "date", "date"),
    ("ts", "timestamptz", "timestamp with time zone"),
    ("v", "varchar", "character varying"),
    ("j", "json", "json"),
    ("jb", "jsonb", "jsonb"),
    ("u", "uuid", "uuid"),
    ("tags", "text[]", "text[]"),
    ("nums", "bigint[]", "bigint[]"),
]


def create_wide_table(psql, schema: str, table: str = "wide") -> None:
    cols = ", ".join(f"{name} {ddl}" for name, ddl, _ in COLUMNS)
    psql.sql(f"create table {schema}.{table} ({cols})")


def rows_of(output: str) -> list[list[str]]:
    """Splits psql -A output (field separator '|') into rows, dropping titles and footers."""
    rows = []
    for line in output.splitlines():
        if "|" in line:
            rows.append(line.split("|"))
    return rows


def test_startup_variables_and_version(psql, info, is_tally):
    """psql's start-up: it connects, fills its variables from the ParameterStatus messages the
    server sends (server_version, ...) and reports the connection; version() and
    `show server_version` agree with what it received. tally must claim PostgreSQL 16.6."""
    out = psql.script(
        "\\echo VERSION_NAME=:SERVER_VERSION_NAME\n"
        "\\echo VERSION_NUM=:SERVER_VERSION_NUM\n"
        "\\echo DB=:DBNAME USER=:USER\n"
        "\\conninfo\n"
        "show server_version;\n"
        "select version();\n"
        "select current_database(), current_user, current_schema();\n",
        "-A",
        "-t",
    ).stdout
    lines = out.splitlines()
    name = next(line for line in lines if line.startswith("VERSION_NAME=")).split("=", 1)[1]
    num = next(line for line in lines if line.startswith("VERSION_NUM=")).split("=", 1)[1]
    assert num.isdigit(), f"SERVER_VERSION_NUM not numeric: {num!r}"
    assert f"DB={info.dbname} USER={info.user}" in lines
    assert any("You are connected to database" in line for line in lines), out
    # show server_version returns exactly the ParameterStatus value psql received.
    assert name in lines, out
    version = next(line for line in lines if line.startswith("PostgreSQL "))
    assert version.startswith("PostgreSQL ")
    assert f"{info.dbname}|{info.user}|public" in lines, out
    if is_tally:
        assert name == "16.6"
        assert num == "160006"
        assert version.startswith("PostgreSQL 16.6 (tally ")


def _interactive(info, keystrokes: list[tuple[bytes, bytes]]) -> str:
    """Runs psql on a pseudo-terminal the way a person does (banner, prompt, readline), types
    each keystroke string and waits for the expected text after it. Returns the screen text."""
    pid, fd = pty.fork()
    if pid == 0:  # child: become psql
        env = info.psql_env()
        env["TERM"] = "dumb"
        args = ["psql", "-X", "-h", info.host, "-p", str(info.port), "-U", info.user, "-d", info.dbname]
        try:
            os.execvpe("psql", args, env)
        finally:
            os._exit(127)
    screen = b""

    def read_until(expected: bytes, limit: float = 30) -> bool:
        nonlocal screen
        deadline = time.monotonic() + limit
        while expected not in screen and time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:  # psql exited
                    break
                if not chunk:
                    break
                screen += chunk
        return expected in screen

    try:
        prompt = f"{info.dbname}=".encode()
        if read_until(prompt):
            for keys, expected in keystrokes:
                os.write(fd, keys)
                read_until(expected)
        os.write(fd, b"\\q\n")
        read_until(b"\0", limit=5)  # drain until psql exits
    finally:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
        os.waitpid(pid, 0)
        os.close(fd)
    return screen.decode(errors="replace").replace("\r\n", "\n")


def test_interactive_session_and_tab_completion(psql, info, schema):
    """An interactive psql session: the banner and the `db=#`/`db=>` prompt appear, a query runs,
    and readline tab completion works (psql completes `schema.ev<TAB>` to the table name by
    querying pg_catalog; if that catalog query fails, the statement names a missing table)."""
    psql.sql(f"create table {schema}.events (id bigint); insert into {schema}.events values (1), (2), (3)")
    screen = _interactive(
        info,
        [
            (b"select 41 + 1 as answer;\n", b"row)"),
            (f"select count(*) as n_events from {schema}.ev\t;\n".encode(), b"n_events"),
        ],
    )
    assert screen.startswith("psql ("), screen
    assert f"{info.dbname}=" in screen, screen
    assert "answer" in screen and "42" in screen, screen
    assert f"{schema}.events" in screen, f"tab completion did not complete the table:\n{screen}"
    after = screen.split("n_events", 1)[1]
    assert "3" in after and "(1 row)" in after, screen
    assert "ERROR" not in screen, screen


def test_list_databases(psql, info):
    """`\\l` lists databases (pg_database joined with roles, encodings, ICU columns) and shows the
    one we are connected to."""
    rows = rows_of(psql.run("-A", "-c", "\\l").stdout)
    assert rows[0][:3] == ["Name", "Owner", "Encoding"]
    names = [r[0] for r in rows[1:]]
    assert info.dbname in names, rows


def test_list_schemas(psql, schema):
    """`\\dn` lists user schemas (not pg_catalog / information_schema), including a new one."""
    rows = rows_of(psql.run("-A", "-c", "\\dn").stdout)
    assert rows[0] == ["Name", "Owner"]
    names = [r[0] for r in rows[1:]]
    assert "public" in names
    assert schema in names
    assert "pg_catalog" not in names and "information_schema" not in names


def test_list_tables_and_views(psql, schema):
    """`\\dt` lists only tables and `\\dv` only views, with the right Type column."""
    psql.sql(f"create table {schema}.orders (id bigint, total double precision)")
    psql.sql(f"create table {schema}.customers (id bigint, name text)")
    psql.sql(f"create view {schema}.big_orders as select id from {schema}.orders where total > 100")

    tables = rows_of(psql.run("-A", "-c", f"\\dt {schema}.*").stdout)
    assert tables[0][:3] == ["Schema", "Name", "Type"]
    assert sorted((r[0], r[1], r[2]) for r in tables[1:]) == [
        (schema, "customers", "table"),
        (schema, "orders", "table"),
    ]

    views = rows_of(psql.run("-A", "-c", f"\\dv {schema}.*").stdout)
    assert [(r[0], r[1], r[2]) for r in views[1:]] == [(schema, "big_orders", "view")]


def test_list_tables_in_search_path(psql, public_name):
    """Plain `\\dt` (no pattern) lists the visible tables of the search path (public)."""
    name = public_name("table")
    psql.sql(f"create table public.{name} (id bigint)")
    rows = rows_of(psql.run("-A", "-c", "\\dt").stdout)
    assert ["public", name, "table"] in [r[:3] for r in rows[1:]], rows


def test_describe_table_columns_and_types(psql, schema):
    """`\\d table` prints every column with PostgreSQL's type name (format_type), e.g. `bigint`,
    `timestamp without time zone`, `numeric(10,2)`, `text[]`, in declaration order."""
    create_wide_table(psql, schema)
    out = psql.run("-A", "-c", f"\\d {schema}.wide").stdout
    assert f'Table "{schema}.wide"' in out, out
    rows = rows_of(out)
    assert rows[0][:2] == ["Column", "Type"]
    assert [(r[0], r[1]) for r in rows[1:]] == [(name, pg) for name, _, pg in COLUMNS]


def test_describe_view(psql, schema):
    """`\\d view` describes a view's columns (types inferred from the query)."""
    psql.sql(f"create table {schema}.base (id bigint, name text, price numeric(10,2))")
    psql.sql(f"create view {schema}.named as select id, name from {schema}.base")
    out = psql.run("-A", "-c", f"\\d {schema}.named").stdout
    assert f'View "{schema}.named"' in out, out
    assert [(r[0], r[1]) for r in rows_of(out)[1:]] == [("id", "bigint"), ("name", "text")]


def test_describe_missing_relation(psql, schema):
    """`\\d` of a relation that does not exist reports so (psql's own message), exit status 1."""
    proc = psql.run("-A", "-c", f"\\d {schema}.nothing_here", check=False)
    assert proc.returncode == 1
    assert f'Did not find any relation named "{schema}.nothing_here"' in proc.stderr


def test_list_functions(psql, schema):
    """`\\df` (pg_proc joined with pg_namespace, pg_get_function_result, ...) must not error."""
    proc = psql.run("-A", "-c", "\\df")
    assert "List of functions" in proc.stdout
    assert proc.stderr == ""
    proc = psql.run("-A", "-c", f"\\df {schema}.*")
    assert "List of functions" in proc.stdout
    assert "(0 rows)" in proc.stdout


def test_error_reports_sqlstate(psql, schema):
    """A failing statement gives psql an ErrorResponse with the right SQLSTATE (42P01 for a
    missing table), a non-zero exit status and the session survives for the next command."""
    proc = psql.run(
        "-v",
        "VERBOSITY=verbose",
        "-c",
        f"select * from {schema}.missing_table",
        check=False,
    )
    assert proc.returncode == 1
    assert f'ERROR:  42P01: relation "{schema}.missing_table" does not exist' in proc.stderr

    # Without ON_ERROR_STOP a script goes on after an error.
    proc = psql.run(
        "-v",
        "ON_ERROR_STOP=0",
        "-A",
        "-t",
        "-f",
        "-",
        input=f"select * from {schema}.missing_table;\nselect 'still here';\n",
        check=False,
    )
    assert "still here" in proc.stdout
    assert "ERROR:" in proc.stderr


def test_query_output_formats(psql):
    """Values come back in PostgreSQL's text format: booleans as t/f, numerics keep their scale,
    NULL is empty, timestamps ISO."""
    out = psql.sql(
        "select 1::bigint, 'a'::text, true, false, 1.5::numeric(10,2), null::text, "
        "date '2024-02-29', timestamp '2024-02-29 13:45:01'"
    )
    assert out.strip() == "1|a|t|f|1.50||2024-02-29|2024-02-29 13:45:01"


def test_copy_from_csv_file(psql, schema, tmp_path):
    """`\\copy t from 'file.csv' csv header` (COPY FROM STDIN fed by psql) loads quoted fields
    and empty unquoted fields as NULL, and reports `COPY n`."""
    psql.sql(f"create table {schema}.people (id bigint, name text, score double precision)")
    path = tmp_path / "people.csv"
    path.write_text('id,name,score\n1,alice,1.5\n2,"smith, bob",\n3,"say ""hi""",-2\n')
    proc = psql.run("-c", f"\\copy {schema}.people from '{path}' csv header")
    assert proc.stdout.strip() == "COPY 3"
    out = psql.sql(f"select id, name, coalesce(score::text, 'NULL') from {schema}.people order by id")
    assert out.splitlines() == ["1|alice|1.5", "2|smith, bob|NULL", '3|say "hi"|-2']


def test_copy_from_text_file_with_column_list(psql, schema, tmp_path):
    """`\\copy t (cols) from file` in the default text format: tab separated, \\N is NULL,
    columns not listed are NULL."""
    psql.sql(f"create table {schema}.items (id bigint, label text, qty integer)")
    path = tmp_path / "items.txt"
    path.write_text("10\tten\n20\t\\N\n")
    proc = psql.run("-c", f"\\copy {schema}.items (id, label) from '{path}'")
    assert proc.stdout.strip() == "COPY 2"
    out = psql.sql(f"select id, coalesce(label, 'NULL'), coalesce(qty::text, 'NULL') from {schema}.items order by id")
    assert out.splitlines() == ["10|ten|NULL", "20|NULL|NULL"]


def test_copy_query_to_stdout(psql, schema):
    """`\\copy (select ...) to stdout` in text and csv formats (COPY TO STDOUT), with escaping
    and NULL markers exactly as PostgreSQL writes them."""
    psql.sql(f"create table {schema}.t (id bigint, name text)")
    psql.sql(f"insert into {schema}.t values (1, 'alpha'), (2, 'b,c'), (3, null), (4, 'tab\there')")
    text = psql.run("-c", f"\\copy (select id, name from {schema}.t order by id) to stdout").stdout
    assert text == "1\talpha\n2\tb,c\n3\t\\N\n4\ttab\\there\n"
    csv = psql.run(
        "-c", f"\\copy (select id, name from {schema}.t order by id) to stdout with (format csv, header)"
    ).stdout
    assert csv == 'id,name\n1,alpha\n2,"b,c"\n3,\n4,tab\there\n'


def test_copy_to_stdout_writes_values_as_postgres(psql, schema):
    """COPY TO STDOUT writes floats with their shortest digits (`-2`, `1e+20`), real as real,
    timestamps without trailing fraction zeros and with `+00` for timestamptz (the session
    zone is UTC), numerics with their scale, in text and csv."""
    psql.sql(
        f"create table {schema}.v (f double precision, r real, ts timestamp, tz timestamptz,"
        " d date, n numeric(10,2), i integer, b boolean)"
    )
    psql.sql(
        f"insert into {schema}.v values"
        " (-2, 1.5, '2024-01-02 03:04:05.5', '2024-01-02 03:04:05+00', '2024-01-02', 1.5, -7, true),"
        " (1e20, 0.1, '2024-01-02 03:04:05', '2024-01-02 03:04:05.123456+00', '1999-12-31', -0.05, 0, false),"
        " (0.1, null, null, null, null, null, null, null)"
    )
    query = f"select * from {schema}.v order by f"
    text = psql.run("-c", f"\\copy ({query}) to stdout").stdout
    assert text == (
        "-2\t1.5\t2024-01-02 03:04:05.5\t2024-01-02 03:04:05+00\t2024-01-02\t1.50\t-7\tt\n"
        "0.1\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\n"
        "1e+20\t0.1\t2024-01-02 03:04:05\t2024-01-02 03:04:05.123456+00\t1999-12-31\t-0.05\t0\tf\n"
    )
    csv = psql.run("-c", f"\\copy ({query}) to stdout with (format csv)").stdout
    assert csv == (
        "-2,1.5,2024-01-02 03:04:05.5,2024-01-02 03:04:05+00,2024-01-02,1.50,-7,t\n"
        "0.1,,,,,,,\n"
        "1e+20,0.1,2024-01-02 03:04:05,2024-01-02 03:04:05.123456+00,1999-12-31,-0.05,0,f\n"
    )


def test_copy_table_to_stdout(psql, schema):
    """`\\copy table to stdout` (COPY table TO STDOUT, not a query) exports all rows."""
    psql.sql(f"create table {schema}.t (id bigint, flag boolean)")
    psql.sql(f"insert into {schema}.t values (1, true), (2, false)")
    out = psql.run("-c", f"\\copy {schema}.t to stdout").stdout
    assert sorted(out.splitlines()) == ["1\tt", "2\tf"]


def test_script_with_transaction_and_row_counts(psql, schema):
    """A script mixing DDL, DML in a transaction and a rollback: psql shows the command tags
    with row counts (INSERT 0 n, UPDATE n, DELETE n) and the rolled back work is gone."""
    proc = psql.script(
        f"create table {schema}.acct (id bigint, balance bigint);\n"
        f"insert into {schema}.acct values (1, 100), (2, 50), (3, 0);\n"
        "begin;\n"
        f"update {schema}.acct set balance = balance - 10 where id in (1, 2);\n"
        f"delete from {schema}.acct where balance = 0;\n"
        "commit;\n"
        "begin;\n"
        f"delete from {schema}.acct;\n"
        "rollback;\n"
        f"select id, balance from {schema}.acct order by id;\n",
        "-A",
        "-t",
    )
    lines = proc.stdout.splitlines()
    assert lines[:8] == [
        "CREATE TABLE",
        "INSERT 0 3",
        "BEGIN",
        "UPDATE 2",
        "DELETE 1",
        "COMMIT",
        "BEGIN",
        "DELETE 2",
    ], proc.stdout
    assert lines[8:] == ["ROLLBACK", "1|90", "2|40"], proc.stdout


@pytest.mark.parametrize("command", ["\\dT", "\\du", "\\dx", "\\di"])
def test_other_describe_commands_do_not_error(psql, command):
    """Other catalog commands people type (\\dT types, \\du roles, \\dx extensions, \\di indexes)
    run without a catalog error."""
    proc = psql.run("-A", "-c", command)
    if proc.stderr:
        # psql's own answer when a listing is empty (\\di on a database without indexes).
        assert proc.stderr == "Did not find any relations.\n", proc.stderr
    else:
        assert proc.stdout.startswith("List of"), proc.stdout
