"""The ordering gate between the programme topic and the partner topic, and the Kafka probe it uses.

Why a gate
----------
The commissions spec ("Order") requires that a sale sees every plan version
recorded before it, whichever topic a worker happened to read first. Plan and
programme events travel on ``prm.program.v1`` (one partition), sales on
``prm.events.v1``. The relay flushes every programme event before it publishes
anything with a higher sequence, so once an event of ``prm.events.v1`` has been
fetched, every programme event recorded before it is already on Kafka, below
the programme partition's end offset *as observed after the fetch*. A batch of
``prm.events.v1`` may therefore be applied as soon as the programme partition
has been applied, for every projection, at least up to that end offset.

Design chosen: shared checkpoint, plus self-help
------------------------------------------------
The programme partition is applied into PostgreSQL like any partition (source
``kafka:<program topic>:0``, checkpoint with the Kafka offset, in the same
transaction as the documents). Normally the one worker of the group that holds
that partition applies it (the faust agent on the programme topic), and every
worker's gate reads the checkpoint offsets back from PostgreSQL, waiting with a
short bounded poll (``patience``).

If the checkpoint is still behind after ``patience``, the gate does not keep
waiting: it reads the missing offsets itself with a private, group-less
consumer (:class:`KafkaProbe`) and applies them through the same code path
(same advisory lock, same sequence checkpoint), so whichever worker comes
second skips what the first applied. This matters because waiting alone can
stall for a long time or for ever:

* after the owner of the programme partition dies (SIGKILL), nobody consumes
  it until the group's session timeout expires and a rebalance completes;
* during a rebalance the partition is owned by nobody;
* inside one faust worker, every topic is delivered by one fetch loop: when the
  partner topic's stream buffer is full (its agent is waiting in this very
  gate), faust's conductor blocks on ``put`` and stops delivering the programme
  topic too -- a deadlock that the self-help path breaks. Reproduced with a
  wait-only gate: 27k events of backlog, a plan version published while they
  were consumed, and the worker stalled for good; with self-help it waited
  ``patience`` twice and finished.

The alternative (every worker keeps its own in-memory copy of the programme
stream) was rejected: the projections read plan documents through the same
storage port as their other documents, so an in-memory layer would need a
second store implementation and would leave the programme documents out of the
PostgreSQL read models the API reads.

The programme topic is small (plan versions, programme settings), so the rare
duplicate read costs nothing measurable.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

log = structlog.get_logger("prm.worker.gate")


@dataclass(frozen=True)
class Record:
    """One Kafka message of our topics: where it was, and its raw CloudEvents bytes."""

    topic: str
    partition: int
    offset: int
    value: bytes


def kafka_source(topic: str, partition: int) -> str:
    """The checkpoint source of a Kafka partition: ``kafka:<topic>:<partition>``."""
    return f"kafka:{topic}:{partition}"


class MissingTopics(RuntimeError):
    """Our topics do not exist: they are created by ``prm kafka-ensure-topics``, never by the worker."""


class KafkaProbe:
    """A group-less aiokafka client: partition counts, end offsets, group offsets, and range reads.

    It never joins the worker's consumer group and never commits, so it cannot
    disturb the group's assignment or committed offsets.
    """

    def __init__(self, bootstrap: str, client_id: str = "prm-worker-probe") -> None:
        self.bootstrap = bootstrap
        self.client_id = client_id
        self._consumer: Any = None
        self._admin: Any = None
        self._lock = asyncio.Lock()
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the Kafka probe is closed (the worker is stopping)")

    async def _ensure(self) -> Any:
        async with self._lock:
            self._check_open()
            if self._consumer is None:
                consumer = AIOKafkaConsumer(
                    bootstrap_servers=self.bootstrap,
                    client_id=self.client_id,
                    group_id=None,
                    enable_auto_commit=False,
                    auto_offset_reset="earliest",
                )
                await consumer.start()
                self._consumer = consumer
            return self._consumer

    async def _ensure_admin(self) -> Any:
        async with self._lock:
            self._check_open()
            if self._admin is None:
                admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, client_id=f"{self.client_id}-admin")
                await admin.start()
                self._admin = admin
            return self._admin

    async def partitions(self, topics: Sequence[str]) -> dict[str, list[int]]:
        """Partition numbers of each topic; raises :class:`MissingTopics` for any that does not exist."""
        admin = await self._ensure_admin()
        described = await admin.describe_topics(list(topics))
        found = {t["topic"]: sorted(p["partition"] for p in t["partitions"]) for t in described if not t["error_code"]}
        missing = [t for t in topics if not found.get(t)]
        if missing:
            raise MissingTopics(
                f"Kafka topics missing: {', '.join(missing)} (create them with prm kafka-ensure-topics)"
            )
        return {t: found[t] for t in topics}

    async def end_offsets(self, partitions: Sequence[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """The next offset to be written in each partition (the high watermark)."""
        consumer = await self._ensure()
        ends = await consumer.end_offsets([TopicPartition(t, p) for t, p in partitions])
        return {(tp.topic, tp.partition): int(offset) for tp, offset in ends.items()}

    async def group_offsets(self, group_id: str) -> dict[tuple[str, int], int]:
        """The consumer group's committed offsets (what faust has committed, not what is applied)."""
        admin = await self._ensure_admin()
        offsets = await admin.list_consumer_group_offsets(group_id)
        return {(tp.topic, tp.partition): int(meta.offset) for tp, meta in offsets.items() if meta.offset >= 0}

    async def read_range(
        self, topic: str, partition: int, start: int, stop: int, timeout: float = 30.0
    ) -> list[Record]:
        """The messages at offsets ``start <= offset < stop`` of one partition, in order."""
        if start >= stop:
            return []
        consumer = await self._ensure()
        tp = TopicPartition(topic, partition)
        if tp not in consumer.assignment():
            consumer.assign([tp])
        consumer.resume(tp)
        consumer.seek(tp, start)
        records: list[Record] = []
        position = start
        deadline = time.monotonic() + timeout
        try:
            while position < stop:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"reading {topic}[{partition}] {start}..{stop}: stuck at offset {position}")
                fetched = await consumer.getmany(tp, timeout_ms=200, max_records=1000)
                for message in fetched.get(tp, []):
                    if message.offset >= stop:
                        position = stop
                        break
                    if message.offset >= position:
                        records.append(Record(topic, partition, message.offset, message.value))
                        position = message.offset + 1
        finally:
            consumer.pause(tp)
        return records

    async def close(self) -> None:
        async with self._lock:
            self._closed = True
            if self._consumer is not None:
                await self._consumer.stop()
                self._consumer = None
            if self._admin is not None:
                await self._admin.close()
                self._admin = None


class ProgramGate:
    """Makes partner batches wait until the programme partition is applied up to a given end offset.

    ``applied_offset()`` reads, from PostgreSQL, the lowest programme offset
    applied by every projection (``-1`` when none); ``apply(records)`` applies
    programme records through the worker's normal, retried write path.
    """

    def __init__(
        self,
        *,
        topic: str,
        probe: KafkaProbe,
        applied_offset: Callable[[], Awaitable[int]],
        apply: Callable[[list[Record]], Awaitable[None]],
        patience: float = 2.0,
    ) -> None:
        self.topic = topic
        self.partition = 0
        self.probe = probe
        self._applied_offset = applied_offset
        self._apply = apply
        self.patience = patience
        self.applied = -1
        self.helped = 0
        self._catch_up_lock = asyncio.Lock()

    @property
    def source(self) -> str:
        return kafka_source(self.topic, self.partition)

    def note_applied(self, offset: int) -> None:
        """Every projection has applied the programme partition at least up to ``offset``."""
        self.applied = max(self.applied, offset)

    async def end_offset(self) -> int:
        ends = await self.probe.end_offsets([(self.topic, self.partition)])
        return ends[(self.topic, self.partition)]

    async def wait_for(self, end: int) -> None:
        """Return once every projection has applied the programme partition below offset ``end``."""
        if end <= 0 or self.applied >= end - 1:
            return
        loop = asyncio.get_running_loop()
        started = loop.time()
        delay = 0.005
        while True:
            self.note_applied(await self._applied_offset())
            if self.applied >= end - 1:
                return
            if loop.time() - started >= self.patience:
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)
        log.info(
            "program_gate.catching_up",
            topic=self.topic,
            applied_offset=self.applied,
            end_offset=end,
            waited_s=round(loop.time() - started, 3),
        )
        await self.catch_up(end)

    async def catch_up(self, end: int) -> None:
        """Read and apply the programme partition below offset ``end`` ourselves."""
        async with self._catch_up_lock:
            self.note_applied(await self._applied_offset())
            if self.applied >= end - 1:
                return
            records = await self.probe.read_range(self.topic, self.partition, self.applied + 1, end)
            if records:
                await self._apply(records)
                self.note_applied(records[-1].offset)
            self.helped += 1
