"""Which projections ``prm worker`` may apply partition by partition: every document has one writing stream.

The worker's advisory lock of a ``partition_local`` projection covers one Kafka
partition only (``api/cli_worker.py``), so two workers may apply two partitions
of it at the same time. That is safe only if no document is written by events
of two partitions. These tests replay the sample programme (every event type the
domain records) through each projection the way the worker configures it,
record which relay route (topic and key: the partner, ``direct`` or the
programme subject) wrote each document, and check that it is always one route.
Events of one key always land on one partition, so one route means one partition.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

import pytest

from api.cli_worker import projection_specs
from api.sample import generate, run_commands
from consumers.relay import route
from consumers.topics import TopicNames
from domain.application import PartnerProgram
from projections.envelope import EventEnvelope
from projections.memory import InMemoryProjectionStore
from projections.port import Doc, DocKey
from projections.store_reader import read_store
from projections.unit_of_work import UnitOfWork

TOPICS = TopicNames()


@pytest.fixture(scope="module")
def history() -> list[EventEnvelope]:
    program = PartnerProgram(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    run_commands(program, generate(seed=3, scale=1))
    return list(read_store(program))


class RecordingView:
    """A unit of work that notes the route of the event being applied for every document written."""

    def __init__(self, unit: UnitOfWork) -> None:
        self.unit = unit
        self.route: tuple[str, str] = ("", "")
        self.writers: dict[DocKey, set[tuple[str, str]]] = defaultdict(set)

    def get(self, kind: str, key: str) -> Doc | None:
        return self.unit.get(kind, key)

    def scan(self, kind: str) -> Iterator[tuple[str, Doc]]:
        return self.unit.scan(kind)

    def put(self, kind: str, key: str, doc: Doc) -> None:
        self.writers[(kind, key)].add(self.route)
        self.unit.put(kind, key, doc)

    def delete(self, kind: str, key: str) -> None:
        self.writers[(kind, key)].add(self.route)
        self.unit.delete(kind, key)


def writers_of(name: str, history: list[EventEnvelope]) -> dict[DocKey, set[tuple[str, str]]]:
    (spec,) = projection_specs(name)
    view = RecordingView(UnitOfWork(InMemoryProjectionStore(), name))
    for event in history:
        where = route(event, TOPICS)
        view.route = (where.topic, where.key)
        if spec.projection.handles(event):
            spec.projection.apply(event, view)
    return view.writers


@pytest.mark.parametrize("name", ["ledger", "dashboards"])
def test_every_document_of_a_partition_local_projection_has_one_writing_stream(
    name: str, history: list[EventEnvelope]
) -> None:
    (spec,) = projection_specs(name)
    assert spec.partition_local
    writers = writers_of(name, history)
    assert writers, f"the sample wrote no {name} document"
    shared = {doc: sorted(routes) for doc, routes in writers.items() if len(routes) > 1}
    assert not shared, f"{name} documents written from several partitions: {dict(list(shared.items())[:5])}"


def test_the_ledger_programme_documents_come_from_the_programme_topic_only(history: list[EventEnvelope]) -> None:
    writers = writers_of("ledger", history)
    programme = {doc: routes for doc, routes in writers.items() if doc[0] in ("plan", "recalculations")}
    assert programme, "the sample publishes a commission plan"
    assert all(topic == TOPICS.program for routes in programme.values() for topic, _ in routes)
    partner_docs = {doc: routes for doc, routes in writers.items() if doc[0] not in ("plan", "recalculations")}
    assert all(topic == TOPICS.events for routes in partner_docs.values() for topic, _ in routes)
