"""A fresh database on the PostgreSQL server of $SPARSE_AUTOTUNE_TEST_PG_URL (.ci/run starts one), for the tests of
storages and databases on a server: one definition shared by the test modules."""
from __future__ import annotations

import contextlib
import os
import uuid

import pytest

PG_ENV = "SPARSE_AUTOTUNE_TEST_PG_URL"


@contextlib.contextmanager
def fresh_pg_database(prefix: str):
    """Create a database named `prefix` + a random suffix, yield (its URL, psycopg connection arguments), drop it after.
    Skips the test without a server, and fails it under CI (which must run these tests)."""
    base = os.environ.get(PG_ENV)
    if not base and os.environ.get("CI"):
        pytest.fail(f"CI must run the PostgreSQL tests: .ci/run sets {PG_ENV}")
    if not base:
        pytest.skip(f"no PostgreSQL server: set {PG_ENV}=postgresql+psycopg://user@127.0.0.1:PORT/db (.ci/run does)")
    import psycopg
    from sqlalchemy.engine import make_url
    u = make_url(base)
    name = f"{prefix}{uuid.uuid4().hex[:12]}"
    conninfo = dict(host=u.host, port=u.port or 5432, user=u.username, password=u.password, dbname=u.database)
    with psycopg.connect(**conninfo, autocommit=True) as con:
        con.execute(f'CREATE DATABASE "{name}"')
    try:
        yield u.set(database=name).render_as_string(hide_password=False), {**conninfo, "dbname": name}
    finally:
        with psycopg.connect(**conninfo, autocommit=True) as con:
            con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
