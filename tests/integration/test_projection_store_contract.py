"""One contract for the projection store port, run against every implementation."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from projections.memory import InMemoryProjectionStore
from projections.port import Checkpoint, ProjectionStore
from projections.postgres import PostgresProjectionStore
from projections.runner import run_projections
from projections.unit_of_work import UnitOfWork
from tests.helpers import Totals
from tests.helpers import sale_envelope as envelope


@pytest.fixture(params=["memory", "postgres"])
def store(request: pytest.FixtureRequest) -> Iterator[ProjectionStore]:
    if request.param == "memory":
        yield InMemoryProjectionStore()
        return
    request.applymarker(pytest.mark.integration)
    pg = PostgresProjectionStore(request.getfixturevalue("pg_url"), request.getfixturevalue("pg_schema"))
    pg.create_tables()
    yield pg
    pg.close()


class TestProjectionStoreContract:
    def test_commit_and_load(self, store: ProjectionStore) -> None:
        store.commit("p", {("k", "a"): {"x": 1}, ("k", "b"): {"x": 2}}, [], [Checkpoint("store", 5)])
        assert store.load("p", [("k", "a"), ("k", "zz")]) == {("k", "a"): {"x": 1}}
        assert store.load_kind("p", "k") == {"a": {"x": 1}, "b": {"x": 2}}
        assert store.checkpoints("p") == {"store": Checkpoint("store", 5)}
        store.commit("p", {("k", "a"): {"x": 3}}, [("k", "b")], [Checkpoint("store", 9, 42)])
        assert store.load_kind("p", "k") == {"a": {"x": 3}}
        assert store.checkpoints("p")["store"] == Checkpoint("store", 9, 42)
        assert store.load_kind("other", "k") == {}

    def test_reset_forgets_one_projection(self, store: ProjectionStore) -> None:
        store.commit("p", {("k", "a"): {"x": 1}}, [], [Checkpoint("store", 1)])
        store.commit("q", {("k", "a"): {"x": 2}}, [], [])
        store.reset("p")
        assert store.load_kind("p", "k") == {} and store.checkpoints("p") == {}
        assert store.load_kind("q", "k") == {"a": {"x": 2}}

    def test_redelivered_events_change_nothing(self, store: ProjectionStore) -> None:
        events = [envelope(i, partner=f"P-{i % 3}", amount=i) for i in range(1, 101)]
        run_projections(store, [Totals()], events, batch_size=7)
        before = store.load_kind("totals", "partner")
        # The whole stream again, and a suffix re-published: no effect.
        stats = run_projections(store, [Totals()], events + events[50:], batch_size=13)
        assert stats.applied == 0 and stats.skipped == 150
        assert store.load_kind("totals", "partner") == before
        assert sum(d["revenue"] for d in before.values()) == sum(range(1, 101))

    def test_uncommitted_changes_are_visible_within_the_batch_and_lost_without_commit(
        self, store: ProjectionStore
    ) -> None:
        unit = UnitOfWork(store, "totals")
        unit.apply(Totals(), envelope(1), "store")
        unit.apply(Totals(), envelope(2), "store")
        assert unit.get("partner", "P-1") == {"revenue": 20, "sales": 2}
        assert [k for k, _ in unit.scan("partner")] == ["P-1"]
        assert store.load_kind("totals", "partner") == {}  # nothing committed yet
        unit.commit()
        assert store.load_kind("totals", "partner") == {"P-1": {"revenue": 20, "sales": 2}}
        assert store.checkpoints("totals")["store"].sequence == 2
