"""Shared fixtures. Integration fixtures talk to the real servers started by ``deploy/up``."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

DEFAULT_TEST_DB = "postgresql://prm@127.0.0.1:54329/prm_test"
DEFAULT_KAFKA = "127.0.0.1:19092"


@pytest.fixture(scope="session")
def pg_url() -> str:
    url = os.environ.get("PRM_TEST_DATABASE_URL", DEFAULT_TEST_DB)
    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        pytest.fail(f"PostgreSQL is not reachable at {url} ({exc}); start it with deploy/up", pytrace=False)
    return url


@pytest.fixture
def pg_schema(pg_url: str) -> Iterator[str]:
    """A fresh, empty schema for one test, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    yield name
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture
def unborn_schema(pg_url: str) -> Iterator[str]:
    """A schema name that does not exist yet (the code under test creates it), dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    return os.environ.get("PRM_KAFKA_BOOTSTRAP", DEFAULT_KAFKA)
