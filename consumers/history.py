"""The full event history read back from Kafka, in event-store order (the auditor's second source).

The relay publishes every recorded event once or more (at-least-once) as an
:class:`~projections.envelope.EventEnvelope` (CloudEvents JSON): partner events
on ``prm.events.v1`` keyed by partner (``direct`` for events of no partner),
plan and programme events on ``prm.program.v1``. Retention is infinite, so
offset 0 onwards is the audit history.

:class:`KafkaHistory` reads every partition of both topics from its first
offset up to the **end offsets observed when it starts** (a history that keeps
growing is read up to a fixed point), drops re-published duplicates (same
CloudEvents ``id``) and yields the envelopes in total ``sequence`` order with a
streaming k-way merge:

* within one partition, the relay publishes in sequence order, so once the
  duplicates are dropped each partition is an increasing run (a re-published
  event has a sequence at or below the highest already seen in its partition);
* the merge holds one head per partition in a heap and yields the smallest;
  a partition whose buffer is empty is fetched before the merge goes on.

Memory is bounded by reading **each partition with its own consumer**
(``consumer_factory``, what :func:`read_history` uses), polled only when the
merge needs that partition's next record: a partition holds at most one poll
of records (``max_poll_records``) in its buffer plus one fetch response
(``max_partition_fetch_bytes``) inside its consumer, however far the other
partitions run ahead. Nothing is paused or resumed: kafka-python 3.0.12 can park
the records of a paused partition and never fetch it again after the resume
(a replay of a million events stalled that way). Without a factory, the one
consumer given reads every partition and buffers whatever it receives
(memory grows with the skew between partitions; fine for small histories and tests).

Anything that would break the order -- a new event (unseen id) whose sequence
is not above its partition's highest, or two different events with the same
sequence -- raises :class:`HistoryError` with its Kafka coordinates: an audit
never papers over a history it cannot order.

The consumer uses manual assignment (no consumer group, nothing committed on
the broker) and large fetches. A replay that commits :meth:`KafkaHistory.checkpoints`
with its batches can resume with ``start_offsets`` and ``after_sequence``.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from consumers.topics import TopicNames
from projections.envelope import EventEnvelope
from projections.port import Checkpoint
from projections.replay import KafkaCoordinates

__all__ = ["HistoryError", "HistoryStats", "KafkaHistory", "history_consumer", "read_history"]

_PARTITION_READER: dict[str, Any] = {
    "max_partition_fetch_bytes": 4 * 1024 * 1024,
    "fetch_max_bytes": 4 * 1024 * 1024,
    "max_poll_records": 2_000,
}
"""Settings of the one-partition consumers of :func:`read_history` (what bounds the memory per partition)."""


class HistoryError(RuntimeError):
    """The Kafka history cannot be put in event-store order (or cannot be read)."""


@dataclass
class HistoryStats:
    """``records`` read from Kafka, ``duplicates`` dropped (same id seen), ``events`` yielded, ``skipped``
    at or below ``after_sequence`` (already replayed before a resume)."""

    records: int = 0
    duplicates: int = 0
    events: int = 0
    skipped: int = 0
    total_records: int = 0
    per_partition: dict[str, int] = field(default_factory=dict)


def history_consumer(bootstrap: str | Sequence[str], **overrides: Any) -> KafkaConsumer:
    """A group-less consumer tuned for reading whole partitions: large fetches, no commits."""
    servers = [s.strip() for s in bootstrap.split(",")] if isinstance(bootstrap, str) else list(bootstrap)
    config: dict[str, Any] = {
        "bootstrap_servers": [s for s in servers if s],
        "group_id": None,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "allow_auto_create_topics": False,
        "client_id": "prm-history",
        "fetch_max_bytes": 64 * 1024 * 1024,
        "max_partition_fetch_bytes": 16 * 1024 * 1024,
        "fetch_max_wait_ms": 100,
        "max_poll_records": 10_000,
        "receive_buffer_bytes": 4 * 1024 * 1024,
        "check_crcs": False,
        "isolation_level": "read_committed",
        "bootstrap_timeout_ms": 15_000,
    }
    config.update(overrides)
    return KafkaConsumer(**config)


class _Partition:
    __slots__ = (
        "buffer",
        "done",
        "end",
        "fetched_to",
        "head",
        "max_sequence",
        "next_offset",
        "reader",
        "tp",
        "yielded_sequence",
    )

    def __init__(self, tp: TopicPartition, start: int, end: int, floor: int) -> None:
        self.tp = tp
        self.reader: Any = None  # the consumer this partition is polled with
        self.end = end
        self.next_offset = start  # first offset not yet consumed (yielded or dropped)
        self.fetched_to = start  # first offset not yet received from the broker
        self.buffer: deque[Any] = deque()
        self.head: tuple[EventEnvelope, int] | None = None
        self.max_sequence = floor
        self.yielded_sequence = floor
        self.done = start >= end


class KafkaHistory:
    """Iterate the Kafka history in sequence order (see the module docstring). Iterate once.

    ``topics``: the topics to read (all their partitions); ``start_offsets``:
    where to start per ``(topic, partition)`` (default: the beginning);
    ``after_sequence``: drop events at or below it (a resumed replay);
    ``progress(records read, total records)`` is called after each fetch;
    ``consumer_factory``: makes one consumer per partition (memory bounded, see the
    module docstring); ``consumer`` then only answers metadata and offset queries.
    """

    def __init__(
        self,
        consumer: KafkaConsumer,
        topics: Sequence[str],
        *,
        start_offsets: Mapping[tuple[str, int], int] | None = None,
        after_sequence: int = 0,
        progress: Callable[[int, int], None] | None = None,
        poll_timeout_ms: int = 500,
        stall_timeout_s: float = 60.0,
        close_consumer: bool = True,
        consumer_factory: Callable[[], Any] | None = None,
    ) -> None:
        self.consumer = consumer
        self.consumer_factory = consumer_factory
        self.topics = list(topics)
        self.after_sequence = after_sequence
        self.progress = progress
        self.poll_timeout_ms = poll_timeout_ms
        self.stall_timeout_s = stall_timeout_s
        self.close_consumer = close_consumer
        self.stats = HistoryStats()
        self.last_coordinates: KafkaCoordinates | None = None
        self._seen_ids: set[str] = set()
        self._last_sequence = after_sequence
        self._partitions = self._assign(start_offsets or {})
        self._started = False

    # ---- setup ---------------------------------------------------------------------
    def _assign(self, start_offsets: Mapping[tuple[str, int], int]) -> dict[TopicPartition, _Partition]:
        tps: list[TopicPartition] = []
        for topic in self.topics:
            partitions = self.consumer.partitions_for_topic(topic)
            if not partitions:
                raise HistoryError(f"Kafka topic {topic} does not exist (or has no partitions)")
            tps.extend(TopicPartition(topic, p) for p in sorted(partitions))
        if self.consumer_factory is None:
            self.consumer.assign(tps)
        beginnings = self.consumer.beginning_offsets(tps)
        ends = self.consumer.end_offsets(tps)
        states: dict[TopicPartition, _Partition] = {}
        for tp in tps:
            begin = int(beginnings[tp])
            start = int(start_offsets.get((tp.topic, tp.partition), 0))
            end = int(ends[tp])
            if begin > start:
                raise HistoryError(
                    f"{tp.topic}[{tp.partition}] starts at offset {begin}, not {start}: the history was truncated"
                    " (retention must be infinite on the audit topics)"
                )
            state = _Partition(tp, start, end, self.after_sequence)
            states[tp] = state
            self.stats.total_records += max(0, end - start)
            if not state.done and self.consumer_factory is None:
                state.reader = self.consumer
                self.consumer.seek(tp, start)
        return states

    def _reader(self, state: _Partition) -> Any:
        """The consumer ``state`` is polled with (its own one, made on first use, with a factory)."""
        if state.reader is None:
            assert self.consumer_factory is not None
            reader = self.consumer_factory()
            try:
                reader.assign([state.tp])
                reader.seek(state.tp, state.fetched_to)
            except BaseException:
                reader.close(autocommit=False)
                raise
            state.reader = reader
        return state.reader

    def _release(self, state: _Partition) -> None:
        """Close a partition's own consumer once the partition is read (frees its fetch buffers)."""
        if self.consumer_factory is not None and state.reader is not None:
            state.reader.close(autocommit=False)
            state.reader = None

    def close(self) -> None:
        """Close every consumer (the per-partition ones and ``consumer``)."""
        for state in self._partitions.values():
            self._release(state)
        self.consumer.close(autocommit=False)

    @property
    def total_records(self) -> int:
        """Records between the start offsets and the end offsets observed at start (duplicates included)."""
        return self.stats.total_records

    # ---- positions for a resumable replay ---------------------------------------------
    def checkpoints(self) -> list[Checkpoint]:
        """Per partition, ``kafka:<topic>:<partition>`` with the next offset to read and the highest
        sequence yielded from it: commit them with the batch that ends at the last event yielded."""
        return [
            Checkpoint(f"kafka:{tp.topic}:{tp.partition}", state.yielded_sequence, state.next_offset)
            for tp, state in sorted(self._partitions.items(), key=lambda item: (item[0].topic, item[0].partition))
        ]

    def end_offsets(self) -> dict[tuple[str, int], int]:
        return {(tp.topic, tp.partition): state.end for tp, state in self._partitions.items()}

    # ---- reading -------------------------------------------------------------------------
    def __iter__(self) -> Iterator[EventEnvelope]:
        if self._started:
            raise HistoryError("a KafkaHistory is read once")
        self._started = True
        try:
            yield from self._merge()
        finally:
            for state in self._partitions.values():
                self._release(state)
            if self.close_consumer:
                self.consumer.close(autocommit=False)

    def _start_readers(self) -> None:
        """Make the per-partition consumers and their first polls in parallel threads.

        A new kafka-python consumer spends 0.1-0.3 s bootstrapping (metadata, connection to the leader,
        first fetch), mostly waiting on the network; one after the other, for 13 partitions, that was
        seconds. The threads only touch their own consumer; records are put in the buffers here.
        """
        pending = [state for state in self._partitions.values() if not state.done and state.reader is None]
        if self.consumer_factory is None or not pending:
            return

        def first_poll(state: _Partition) -> tuple[_Partition, Any]:
            reader = self._reader(state)
            reader.partitions_for_topic(state.tp.topic)  # metadata now, not a back-off in the first poll
            return state, reader.poll(timeout_ms=self.poll_timeout_ms)

        with ThreadPoolExecutor(max_workers=min(16, len(pending)), thread_name_prefix="prm-history") as pool:
            for _, batches in pool.map(first_poll, pending):
                self._take(batches)

    def _take(self, batches: Mapping[TopicPartition, Sequence[Any]]) -> int:
        """Put polled records in their partitions' buffers; returns how many."""
        got = 0
        for tp, records in batches.items():
            state = self._partitions.get(tp)
            if state is None or state.done or not records:
                continue
            state.buffer.extend(records)
            state.fetched_to = int(records[-1].offset) + 1
            got += len(records)
            name = f"{tp.topic}:{tp.partition}"
            self.stats.per_partition[name] = self.stats.per_partition.get(name, 0) + len(records)
        return got

    def _merge(self) -> Iterator[EventEnvelope]:
        heap: list[tuple[int, str, int, TopicPartition]] = []
        self._start_readers()
        for tp, state in self._partitions.items():
            self._advance(state)
            if state.head is not None:
                heapq.heappush(heap, (state.head[0].sequence, tp.topic, tp.partition, tp))
        while heap:
            _, _, _, tp = heapq.heappop(heap)
            state = self._partitions[tp]
            assert state.head is not None
            event, offset = state.head
            state.head = None
            if event.sequence <= self._last_sequence:
                if event.id in self._seen_ids:  # the same event re-published on another partition
                    self.stats.duplicates += 1
                    state.next_offset = offset + 1
                    self._advance(state)
                    if state.head is not None:
                        heapq.heappush(heap, (state.head[0].sequence, tp.topic, tp.partition, tp))
                    continue
                raise HistoryError(
                    f"{tp.topic}[{tp.partition}]@{offset}: event {event.id} has sequence {event.sequence},"
                    f" already yielded up to {self._last_sequence}: two events share a sequence"
                )
            self._last_sequence = event.sequence
            self._seen_ids.add(event.id)
            state.next_offset = offset + 1
            state.yielded_sequence = event.sequence
            self.stats.events += 1
            self.last_coordinates = KafkaCoordinates(tp.topic, tp.partition, offset)
            yield event
            self._advance(state)
            if state.head is not None:
                heapq.heappush(heap, (state.head[0].sequence, tp.topic, tp.partition, tp))

    def _advance(self, state: _Partition) -> None:
        """Set ``state.head`` to the partition's next event that is neither a duplicate nor already replayed."""
        while True:
            if not state.buffer:
                if state.done:
                    self._release(state)
                    return
                self._fill(state)
                if not state.buffer:
                    self._release(state)
                    return
            record = state.buffer.popleft()
            offset = int(record.offset)
            if offset >= state.end:
                state.done = True
                state.buffer.clear()
                self._release(state)
                return
            self.stats.records += 1
            try:
                event = EventEnvelope.from_json(record.value)
            except (ValueError, KeyError, TypeError) as exc:
                where = f"{state.tp.topic}[{state.tp.partition}]@{offset}"
                raise HistoryError(f"{where}: not an event envelope ({exc})") from exc
            if event.id in self._seen_ids or event.sequence <= self.after_sequence:
                if event.id in self._seen_ids:
                    self.stats.duplicates += 1
                else:
                    self.stats.skipped += 1
                state.next_offset = offset + 1
                if offset + 1 >= state.end:
                    state.done = True
                continue
            if event.sequence <= state.max_sequence:
                raise HistoryError(
                    f"{state.tp.topic}[{state.tp.partition}]@{offset}: event {event.id} (sequence {event.sequence})"
                    f" comes after sequence {state.max_sequence} in its partition and was never seen before:"
                    " the partition is not in event-store order"
                )
            state.max_sequence = event.sequence
            state.head = (event, offset)
            if offset + 1 >= state.end:
                state.done = True
            return

    def _fill(self, wanted: _Partition) -> None:
        """Poll ``wanted``'s consumer until ``wanted`` has buffered records or reaches its end offset."""
        reader = self._reader(wanted)
        deadline = time.monotonic() + self.stall_timeout_s
        while not wanted.buffer and not wanted.done:
            got = self._take(reader.poll(timeout_ms=self.poll_timeout_ms))
            if got:
                deadline = time.monotonic() + self.stall_timeout_s
                if self.progress is not None:
                    self.progress(self.stats.records + self._buffered(), self.stats.total_records)
            elif not wanted.buffer:
                if reader.position(wanted.tp) >= wanted.end:
                    wanted.done = True  # e.g. only transaction markers were left
                elif time.monotonic() > deadline:
                    raise HistoryError(
                        f"no record from {wanted.tp.topic}[{wanted.tp.partition}] for {self.stall_timeout_s:.0f} s"
                        f" (position {reader.position(wanted.tp)}, end {wanted.end})"
                    )

    def _buffered(self) -> int:
        return sum(len(state.buffer) for state in self._partitions.values())


def read_history(
    bootstrap: str | Sequence[str],
    *,
    prefix: str = "",
    start_offsets: Mapping[tuple[str, int], int] | None = None,
    after_sequence: int = 0,
    progress: Callable[[int, int], None] | None = None,
    **consumer_overrides: Any,
) -> KafkaHistory:
    """The history on ``<prefix>prm.events.v1`` (all partitions) and ``<prefix>prm.program.v1``,
    each partition read by its own consumer (bounded memory; ``consumer_overrides`` apply to all)."""
    names = TopicNames(prefix)
    consumer = history_consumer(bootstrap, **consumer_overrides)
    reader_config = {**_PARTITION_READER, **consumer_overrides}

    def one_partition() -> KafkaConsumer:
        return history_consumer(bootstrap, **reader_config)

    try:
        return KafkaHistory(
            consumer,
            [names.events, names.program],
            start_offsets=start_offsets,
            after_sequence=after_sequence,
            progress=progress,
            consumer_factory=one_partition,
        )
    except BaseException:
        consumer.close(autocommit=False)
        raise
