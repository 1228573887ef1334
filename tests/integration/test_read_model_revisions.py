"""Revisions of the PostgreSQL read models, and the workers' working copies kept across batches.

``PostgresProjectionStore`` stamps every commit's documents with the projection's
next revision; ``changes_since`` tells a writer which documents *other* commits
wrote since it last looked. ``ReadModelWriter`` (``keep_docs``) keeps each lock
scope's working copies between batches and drops only those. These tests check
the store's answers, and that writers sharing one schema in turns -- as two
workers sharing the partitions do -- end with exactly the read models of one
in-process fold, whatever their cache sizes.
"""

from __future__ import annotations

import random
import zlib
from collections import defaultdict
from collections.abc import Iterator

import pytest

from api.cli_worker import projection_specs
from api.sample import generate, run_commands
from consumers.relay import route
from consumers.topics import TopicNames
from consumers.worker import Parsed, ReadModelWriter
from domain.application import PartnerProgram
from projections.envelope import EventEnvelope
from projections.memory import InMemoryProjectionStore
from projections.port import Checkpoint
from projections.postgres import DELETES_KEPT, Changes, PostgresProjectionStore
from projections.runner import run_projections
from projections.store_reader import read_store

pytestmark = pytest.mark.integration

TOPICS = TopicNames()


@pytest.fixture
def stores(pg_url: str, pg_schema: str) -> Iterator[tuple[PostgresProjectionStore, PostgresProjectionStore]]:
    one, two = PostgresProjectionStore(pg_url, pg_schema), PostgresProjectionStore(pg_url, pg_schema)
    one.create_tables()
    yield one, two
    one.close()
    two.close()


def test_changes_since_names_what_other_commits_wrote(
    stores: tuple[PostgresProjectionStore, PostgresProjectionStore],
) -> None:
    one, two = stores
    assert one.changes_since("p", None).keys is None  # never looked: forget everything
    first = one.changes_since("p", None).revision
    assert first == 0

    one.commit("p", {("k", "a"): {"x": 1}, ("k", "b"): {"x": 1}}, [], [Checkpoint("s1", 1)])
    mine = one.last_revision
    assert mine == 1
    # Only my own commit since: nothing to drop.
    assert one.changes_since("p", first, [mine]).keys == []
    # Someone else who looked at revision 0 must drop both.
    assert sorted(two.changes_since("p", first).keys or []) == [("k", "a"), ("k", "b")]

    two.commit("p", {("k", "b"): {"x": 2}, ("k", "c"): {"x": 2}}, [], [Checkpoint("s2", 1)])
    seen = one.changes_since("p", first, [mine])
    assert seen.revision == 2 and sorted(seen.keys or []) == [("k", "b"), ("k", "c")]
    # Up to date: nothing; another projection's commits are not counted.
    two.commit("q", {("k", "a"): {"x": 9}}, [], [])
    assert one.changes_since("p", seen.revision).keys == []
    # A document I wrote after the other writer is mine again.
    one.commit("p", {("k", "b"): {"x": 3}}, [], [Checkpoint("s1", 2)])
    assert one.changes_since("p", seen.revision, [3]).keys == []
    assert two.changes_since("p", seen.revision).keys == [("k", "b")]
    # More changed keys than the reader cares to hear of: forget everything.
    assert two.changes_since("p", seen.revision, limit=1).keys == [("k", "b")]
    assert two.changes_since("p", first, limit=2) == Changes(3, None)
    assert sorted(two.changes_since("p", first, limit=3).keys or []) == [("k", "a"), ("k", "b"), ("k", "c")]
    # An empty commit takes no revision.
    two.commit("p", {}, [], [])
    assert two.changes_since("p", 3).keys == []


def test_deletes_and_resets_by_others_make_readers_forget_everything(
    stores: tuple[PostgresProjectionStore, PostgresProjectionStore],
) -> None:
    one, two = stores
    one.commit("p", {("k", "a"): {"x": 1}, ("k", "b"): {"x": 1}}, [], [])
    assert one.last_revision == 1
    two.commit("p", {}, [("k", "a")], [Checkpoint("s", 1)])  # revision 2 deletes
    assert one.changes_since("p", 1).keys is None
    # The deleting writer itself knows what it deleted.
    assert two.changes_since("p", 1, [2]).keys == []
    # Another writer's later delete is still seen when my own delete came after it.
    one.commit("p", {}, [("k", "b")], [])  # revision 3, mine, also deletes
    assert one.changes_since("p", 1, [3]).keys is None
    one.reset("p")
    assert two.changes_since("p", 3, [2]).keys is None
    # A reader behind its own counter (the revisions were dropped and begun again) forgets everything.
    assert one.changes_since("p", 10_000).keys is None


def test_the_list_of_deleting_commits_is_bounded(
    stores: tuple[PostgresProjectionStore, PostgresProjectionStore],
) -> None:
    one, two = stores
    one.commit("p", {("k", "a"): {"x": 0}}, [], [])
    for i in range(DELETES_KEPT + 5):
        one.commit("p", {("k", f"n{i}"): {"x": i}}, [("k", "gone")], [])
    deleted = one.conn.execute(f'SELECT deleted FROM "{one.schema}".rm_revisions WHERE projection = %s', ("p",))
    row = deleted.fetchone()
    assert row is not None and len(row[0]) == DELETES_KEPT
    assert row[0] == list(range(DELETES_KEPT + 6 - DELETES_KEPT + 1, DELETES_KEPT + 6 + 1))
    own = set(range(2, DELETES_KEPT + 7))
    # Every commit since revision 1 was this reader's own: nothing to forget.
    assert one.changes_since("p", 1, own).keys == []
    # Had revision 3 been another writer's, its delete is no longer listed: the reader can't tell, so it forgets
    # everything; from a revision after the oldest one listed, it can tell.
    assert one.changes_since("p", 1, own - {3}).keys is None
    assert one.changes_since("p", DELETES_KEPT, own - {3}).keys == []
    assert two.changes_since("p", DELETES_KEPT + 5).keys is None


@pytest.fixture(scope="module")
def history() -> list[EventEnvelope]:
    program = PartnerProgram(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    run_commands(program, generate(seed=11, scale=1))
    return list(read_store(program))


def partitions(history: list[EventEnvelope]) -> dict[str, list[Parsed]]:
    """The history as the relay routes it: per ``kafka:<topic>:<partition>`` source, in order, with offsets."""
    parts: dict[str, list[Parsed]] = defaultdict(list)
    for event in history:
        where = route(event, TOPICS)
        partition = 0 if where.topic == TOPICS.program else zlib.crc32(where.key.encode()) % 6
        source = f"kafka:{where.topic}:{partition}"
        parts[source].append((len(parts[source]), event))
    return parts


@pytest.mark.parametrize("keep_docs", [0, 3, 10_000])
def test_writers_taking_turns_build_the_read_models_of_one_fold(
    pg_url: str, pg_schema: str, history: list[EventEnvelope], keep_docs: int
) -> None:
    names = "ledger,conflicts,dashboards"
    reference = InMemoryProjectionStore()
    run_projections(reference, [spec.projection for spec in projection_specs(names)], history, batch_size=50)

    specs = projection_specs(names)
    local = [spec for spec in specs if spec.partition_local]
    shared = [spec for spec in specs if not spec.partition_local]
    writers = [ReadModelWriter(pg_url, pg_schema, projection_specs(names), keep_docs=keep_docs) for _ in range(2)]
    writers[0].create_tables()
    parts = partitions(history)
    program = next(source for source in parts if TOPICS.program in source)
    rng = random.Random(keep_docs)
    cursor = dict.fromkeys(parts, 0)
    try:
        # The programme partition first (its events are few and the partner events depend on them, as the
        # gate ensures), then batches of random partitions and sizes, each applied by a random writer.
        writers[0].apply_parsed({program: parts[program]}, writers[0].apply_order)
        cursor[program] = len(parts[program])
        while any(cursor[s] < len(parts[s]) for s in parts):
            open_sources = [s for s in parts if cursor[s] < len(parts[s])]
            batch = {}
            for source in rng.sample(open_sources, k=min(len(open_sources), rng.randint(1, 3))):
                size = rng.randint(1, 40)
                batch[source] = parts[source][cursor[source] : cursor[source] + size]
                cursor[source] += len(batch[source])
            writer = rng.choice(writers)
            for source, records in batch.items():
                writer.apply_parsed({source: records}, local)
            writer.apply_parsed(batch, shared)
            # Now and then a batch is delivered again (a rebalance): nothing changes.
            if rng.random() < 0.1:
                source, records = next(iter(batch.items()))
                rng.choice(writers).apply_parsed({source: records}, writers[0].apply_order)
        reused = sum(w.reuse["kept"] for w in writers)
        if keep_docs:
            assert reused > 0
        else:
            assert reused == 0
        check = PostgresProjectionStore(pg_url, pg_schema)
        for spec in specs:
            assert check.dump(spec.name) == reference.dump(spec.name), spec.name
        check.close()
    finally:
        for writer in writers:
            writer.discard_store()
