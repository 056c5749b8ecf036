"""The test PostgreSQL server (.ci/postgres.sh): a fresh database per test."""

from __future__ import annotations

import os
import time

import pytest


def fresh_pg_database() -> str:
    """A new database on the test PostgreSQL server (.ci/postgres.sh); skips without one."""
    url = os.environ.get("VLSWEEP_TEST_PG_URL")
    if not url:
        if os.environ.get("VLSWEEP_REQUIRE_PG"):
            pytest.fail('VLSWEEP_REQUIRE_PG is set but no server: eval "$(bash .ci/postgres.sh)"')
        pytest.skip('no PostgreSQL server (eval "$(bash .ci/postgres.sh)" starts one)')
    import sqlalchemy

    name = f"t_{os.getpid()}_{int(time.time() * 1000)}"
    engine = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    engine.dispose()
    return url.rsplit("/", 1)[0] + "/" + name
