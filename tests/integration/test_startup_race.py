"""Processes starting together on a fresh database: every one of them starts.

A relay, an ingest and workers launched at the same moment each create the
tables they need; PostgreSQL's ``CREATE … IF NOT EXISTS`` is not safe against a
concurrent twin ("tuple concurrently updated", duplicate catalog keys), so the
creation is serialised by an advisory lock.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from api.bootstrap import build_key_store, build_program, build_projection_store
from api.settings import Settings

pytestmark = pytest.mark.integration

STARTERS = 6


@pytest.mark.parametrize("round_", range(3))
def test_concurrent_starts_on_a_unborn_schema_all_succeed(pg_url: str, unborn_schema: str, round_: int) -> None:
    settings = Settings(store="postgres", database_url=pg_url, database_schema=unborn_schema, read_models="postgres")
    barrier = threading.Barrier(STARTERS)

    def start(i: int) -> str:
        barrier.wait(timeout=30)
        if i % 3 == 0:
            build_program(settings).close()
        elif i % 3 == 1:
            build_projection_store(settings)
        else:
            build_key_store(settings)
        return "started"

    with ThreadPoolExecutor(STARTERS) as pool:
        outcomes = list(pool.map(start, range(STARTERS)))

    assert outcomes == ["started"] * STARTERS
    with psycopg.connect(pg_url) as conn:
        tables = {
            row[0]
            for row in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (unborn_schema,)
            )
        }
    assert {"rm_docs", "rm_checkpoints", "prm_api_keys"} <= tables
    assert any(name.endswith("events") for name in tables), tables
