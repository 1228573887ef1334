"""One contract for the projection store port, run against every implementation."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from projections.envelope import EventEnvelope
from projections.memory import InMemoryProjectionStore
from projections.port import Checkpoint, ProjectionStore, ReadView
from projections.postgres import PostgresProjectionStore
from projections.runner import run_projections
from projections.unit_of_work import UnitOfWork


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


def envelope(sequence: int, partner: str = "P-1", amount: int = 10) -> EventEnvelope:
    return EventEnvelope(
        id=f"e-{sequence}",
        type="prm.sale.recorded.v1",
        subject=f"S-{sequence}",
        sequence=sequence,
        aggregate_id=f"a-{sequence}",
        aggregate_version=1,
        partner_id=partner,
        time=datetime(2026, 1, 1, tzinfo=UTC),
        data={"total_minor": amount},
    )


class Totals:
    """A tiny reducer: revenue per partner."""

    name = "totals"

    def handles(self, event: EventEnvelope) -> bool:
        return event.type == "prm.sale.recorded.v1"

    def apply(self, event: EventEnvelope, view: ReadView) -> None:
        key = event.partner_id or "direct"
        doc = view.get("partner", key) or {"revenue": 0, "sales": 0}
        doc["revenue"] += event.data["total_minor"]
        doc["sales"] += 1
        view.put("partner", key, doc)


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
