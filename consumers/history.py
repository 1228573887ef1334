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
  Partitions are paused only once read to their end: kafka-python 3.0.12
  can park the records of a paused partition and never fetch it again after
  the resume, so a skewed history is buffered in memory instead (about
  600 MB per million events); one consumer per partition would bound it.

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
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from consumers.topics import TopicNames
from projections.envelope import EventEnvelope
from projections.port import Checkpoint
from projections.replay import KafkaCoordinates

__all__ = ["HistoryError", "HistoryStats", "KafkaHistory", "history_consumer", "read_history"]

_HIGH_WATER: int | None = None
"""Records buffered per partition above which the partition is paused (None: never; see the module docstring)."""


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
    __slots__ = ("buffer", "done", "end", "fetched_to", "head", "max_sequence", "next_offset", "tp", "yielded_sequence")

    def __init__(self, tp: TopicPartition, start: int, end: int, floor: int) -> None:
        self.tp = tp
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
    ``progress(records read, total records)`` is called after each fetch.
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
    ) -> None:
        self.consumer = consumer
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
        self._paused: set[TopicPartition] = set()
        self._started = False

    # ---- setup ---------------------------------------------------------------------
    def _assign(self, start_offsets: Mapping[tuple[str, int], int]) -> dict[TopicPartition, _Partition]:
        tps: list[TopicPartition] = []
        for topic in self.topics:
            partitions = self.consumer.partitions_for_topic(topic)
            if not partitions:
                raise HistoryError(f"Kafka topic {topic} does not exist (or has no partitions)")
            tps.extend(TopicPartition(topic, p) for p in sorted(partitions))
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
            if not state.done:
                self.consumer.seek(tp, start)
        return states

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
            if self.close_consumer:
                self.consumer.close(autocommit=False)

    def _merge(self) -> Iterator[EventEnvelope]:
        heap: list[tuple[int, str, int, TopicPartition]] = []
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
                    return
                self._fill(state)
                if not state.buffer:
                    return
            record = state.buffer.popleft()
            offset = int(record.offset)
            if offset >= state.end:
                state.done = True
                state.buffer.clear()
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
        """Fetch until ``wanted`` has buffered records or reaches its end offset."""
        deadline = time.monotonic() + self.stall_timeout_s
        while not wanted.buffer and not wanted.done:
            self._flow_control(wanted)
            batches = self.consumer.poll(timeout_ms=self.poll_timeout_ms)
            got = 0
            for tp, records in batches.items():
                state = self._partitions.get(tp)
                if state is None or state.done:
                    continue
                state.buffer.extend(records)
                state.fetched_to = int(records[-1].offset) + 1
                got += len(records)
                self.stats.per_partition[f"{tp.topic}:{tp.partition}"] = self.stats.per_partition.get(
                    f"{tp.topic}:{tp.partition}", 0
                ) + len(records)
            if got:
                deadline = time.monotonic() + self.stall_timeout_s
                if self.progress is not None:
                    self.progress(self.stats.records + self._buffered(), self.stats.total_records)
            elif not wanted.buffer:
                if self.consumer.position(wanted.tp) >= wanted.end:
                    wanted.done = True  # e.g. only transaction markers were left
                elif time.monotonic() > deadline:
                    raise HistoryError(
                        f"no record from {wanted.tp.topic}[{wanted.tp.partition}] for {self.stall_timeout_s:.0f} s"
                        f" (position {self.consumer.position(wanted.tp)}, end {wanted.end})"
                    )

    def _flow_control(self, wanted: _Partition) -> None:
        """Fetch ``wanted``; pause the partitions whose buffers are full or that are done."""
        pause, resume = [], []
        for tp, state in self._partitions.items():
            full = _HIGH_WATER is not None and len(state.buffer) >= _HIGH_WATER
            hold = state is not wanted and (state.done or full)
            if hold and tp not in self._paused:
                pause.append(tp)
            elif not hold and tp in self._paused:
                resume.append(tp)
        if pause:
            self.consumer.pause(*pause)
            self._paused.update(pause)
        if resume:
            self.consumer.resume(*resume)
            self._paused.difference_update(resume)
            # kafka-python 3.0.12 can keep records fetched for a partition that was then paused and never
            # hand them out after the resume (the partition stalls). Seeking to the first offset not yet
            # received drops whatever it parked and fetches again from there.
            for tp in resume:
                self.consumer.seek(tp, self._partitions[tp].fetched_to)

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
    """The history on ``<prefix>prm.events.v1`` (all partitions) and ``<prefix>prm.program.v1``."""
    names = TopicNames(prefix)
    consumer = history_consumer(bootstrap, **consumer_overrides)
    try:
        return KafkaHistory(
            consumer,
            [names.events, names.program],
            start_offsets=start_offsets,
            after_sequence=after_sequence,
            progress=progress,
        )
    except BaseException:
        consumer.close(autocommit=False)
        raise
