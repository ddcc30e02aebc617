"""dbt's own adapter test suite (dbt-tests-adapter, the basic classes dbt-postgres runs for
itself) against the server under test, through the unmodified dbt-postgres adapter.

Run by scripts/dbt-adapter-tests.sh, which installs the suite into the dbt virtual
environment and points it at a fresh tally. Against PostgreSQL, for comparison:
    TALLY_PORT=5432 TALLY_DB=test TALLY_USER=postgres <venv>/bin/pytest tests/dbt_adapter
"""

import os

import pytest

pytest_plugins = ["dbt.tests.fixtures.project"]


@pytest.fixture(scope="class")
def dbt_profile_target():
    return {
        "type": "postgres",
        "threads": 4,
        "host": os.environ.get("TALLY_HOST", "127.0.0.1"),
        "port": int(os.environ["TALLY_PORT"]),
        "user": os.environ.get("TALLY_USER", "tally"),
        "pass": os.environ.get("TALLY_PASSWORD", ""),
        "dbname": os.environ.get("TALLY_DB", "tally"),
    }
