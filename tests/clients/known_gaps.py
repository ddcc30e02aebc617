"""Client behaviours tally does not match yet, each with the reason.

Every entry marks a test as a *strict* expected failure when the server under test is tally
(never against PostgreSQL): the test still runs and still asserts PostgreSQL's behaviour, and
the suite fails as soon as a gap closes (XPASS), so this list can only shrink. Keys are
``<file>::<test>`` under ``tests/clients``.
"""

_TYPES = (
    "type fidelity: uuid, json/jsonb and varchar(n) columns and results are reported as text "
    "(OID 25) and numeric(p,s) without its type modifier"
)

KNOWN_GAPS: dict[str, str] = {
    "test_asyncpg.py::test_all_scalar_types": _TYPES + "; asyncpg then refuses uuid.UUID arguments",
    "test_asyncpg.py::test_table_of_all_types": _TYPES + "; asyncpg then refuses uuid.UUID arguments",
    "test_asyncpg.py::test_array_parameters": "asyncpg's array type introspection recurses on tally's pg_type rows",
    "test_asyncpg.py::test_array_parameter_with_any": "asyncpg's array type introspection recurses on tally's pg_type rows",
    "test_asyncpg.py::test_array_columns": "asyncpg's array type introspection recurses on tally's pg_type rows",
    "test_jdbc.py::test_prepared_statement_select": "RowDescription carries no table OID and column number (getTableName, isNullable)",
    "test_jdbc.py::test_get_columns": _TYPES,
    "test_jdbc.py::test_get_primary_keys": "information_schema._pg_expandarray is missing",
    "test_jdbc.py::test_program_exit_status": "summarises the JDBC steps above",
    "test_psql.py::test_describe_table_columns_and_types": _TYPES,
    "test_psql.py::test_query_output_formats": "text output: timestamps print .000000 and whole floats print -2.0",
    "test_psql.py::test_copy_from_csv_file": "text output: whole floats print -2.0",
    "test_psql.py::test_other_describe_commands_do_not_error[\\\\du]": "ARRAY(subquery) is not supported",
    "test_psycopg.py::test_params_roundtrip_text_and_binary": _TYPES,
    "test_psycopg.py::test_table_roundtrip_text_results": _TYPES,
    "test_psycopg.py::test_table_roundtrip_binary_results": _TYPES,
    "test_psycopg.py::test_result_column_description": _TYPES,
    "test_sqlalchemy.py::test_inspect_schema_table_and_view_names": "a table created by CREATE TABLE AS is missing from SQLAlchemy's relation lookup",
    "test_sqlalchemy.py::test_inspect_columns_and_types": "column reflection uses correlated scalar subqueries DataFusion cannot plan",
    "test_sqlalchemy.py::test_inspect_view_columns": "column reflection uses correlated scalar subqueries DataFusion cannot plan",
    "test_sqlalchemy.py::test_inspect_constraints_and_indexes": "pg_index.indkey is not an array (unnest/generate_subscripts)",
    "test_sqlalchemy.py::test_metadata_reflect": "column reflection uses correlated scalar subqueries DataFusion cannot plan",
    "test_sqlalchemy.py::test_pandas_read_sql_table": "column reflection uses correlated scalar subqueries DataFusion cannot plan",
    "test_sqlalchemy.py::test_pandas_to_sql_replace_roundtrip": "column reflection uses correlated scalar subqueries DataFusion cannot plan",
}
