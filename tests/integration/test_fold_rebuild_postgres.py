"""Read models folded into PostgreSQL equal the same fold in memory, in every mode of ``run_projections``.

And the store's bulk paths (one statement per batch for upserts, deletes and
multi-key loads) keep documents exactly, quotes, backslashes and non-ASCII text included.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from api.sample import generate, run_commands
from projections.conflicts import ChannelConflicts
from projections.dashboards import Dashboards
from projections.envelope import EventEnvelope
from projections.ledger import CommissionLedger
from projections.memory import InMemoryProjectionStore
from projections.port import Checkpoint, Doc, DocKey, Projection
from projections.postgres import PostgresProjectionStore
from projections.runner import run_projections
from projections.store_reader import read_store
from tests.unit.conftest import new_app

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sample() -> list[EventEnvelope]:
    app = new_app()
    try:
        run_commands(app, generate(seed=7, scale=1))
        return list(read_store(app))
    finally:
        app.close()


@pytest.fixture
def pg(pg_url: str, pg_schema: str) -> Iterator[PostgresProjectionStore]:
    store = PostgresProjectionStore(pg_url, pg_schema)
    store.create_tables()
    yield store
    store.close()


def projections() -> list[Projection]:
    return [CommissionLedger(), ChannelConflicts(), Dashboards()]


def dumps(store: InMemoryProjectionStore | PostgresProjectionStore) -> dict[str, dict[DocKey, Doc]]:
    return {p.name: store.dump(p.name) for p in projections()}


@pytest.mark.parametrize(
    "options",
    [{"batch_size": 400, "rebuild": True}, {"batch_size": 250}, {"batch_size": 1000, "exclusive": True}],
)
def test_postgres_holds_what_the_fold_in_memory_holds(
    sample: list[EventEnvelope], pg: PostgresProjectionStore, options: dict[str, Any]
) -> None:
    memory = InMemoryProjectionStore()
    run_projections(memory, projections(), sample, batch_size=500)
    run_projections(pg, projections(), sample, **options)
    assert dumps(pg) == dumps(memory)
    last = sample[-1].sequence
    assert all(pg.checkpoints(p.name)["store"].sequence == last for p in projections())


def test_a_rebuild_in_postgres_replaces_what_was_there(
    sample: list[EventEnvelope], pg: PostgresProjectionStore
) -> None:
    run_projections(pg, projections(), sample[:300], batch_size=100)
    pg.commit("ledger", {("line", "L-GHOST"): {"stale": True}}, [], [Checkpoint("elsewhere", 1)])
    run_projections(pg, projections(), sample, batch_size=700, rebuild=True)
    memory = InMemoryProjectionStore()
    run_projections(memory, projections(), sample, batch_size=500)
    assert dumps(pg) == dumps(memory)
    assert set(pg.checkpoints("ledger")) == {"store"}


def test_bulk_writes_and_reads_keep_documents_exactly(pg: PostgresProjectionStore) -> None:
    text = 'a "quoted" \\back\\slash\n đ 東京 😀'
    docs: dict[DocKey, Doc] = {
        ("k", f'key {i} "q" \\ é'): {"text": f"{text} {i}", "n": i, "f": 0.1, "l": [None]} for i in range(300)
    }
    pg.commit("p", docs, [], [Checkpoint("store", 1)])
    keys = [*docs, ("k", "absent"), ("other", "key 1")]
    assert pg.load("p", keys) == docs
    assert pg.load("p", [("k", 'key 7 "q" \\ é')]) == {("k", 'key 7 "q" \\ é'): docs[("k", 'key 7 "q" \\ é')]}
    gone = list(docs)[:100]
    changed = {key: {"v": 2} for key in list(docs)[100:150]}
    pg.commit("p", changed, gone, [Checkpoint("store", 2, 9)])
    expected = {key: doc for key, doc in docs.items() if key not in gone} | changed
    assert pg.dump("p") == expected
    assert pg.checkpoints("p") == {"store": Checkpoint("store", 2, 9)}
