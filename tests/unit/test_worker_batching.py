"""The worker's batch pipeline over a faust stream: batches counted per partition, acks only after the handler.

A stand-in for the faust stream (``noack()``, ``events()``, ``ack()``) feeds
events; the handler receives :class:`Record` batches. No Kafka, no PostgreSQL.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

import consumers.worker as worker_module
from consumers.program_gate import Record
from consumers.worker import WorkerConfig, _BatchPipeline


@dataclass(frozen=True)
class Message:
    topic: str
    partition: int
    offset: int


@dataclass(frozen=True)
class Event:
    message: Message
    value: bytes


@dataclass
class Stream:
    """What the pipeline uses of a faust stream."""

    feed: list[Event]
    done: asyncio.Event = field(default_factory=asyncio.Event)
    acked: list[Event] = field(default_factory=list)

    def noack(self) -> Stream:
        return self

    async def events(self) -> AsyncIterator[Event]:
        for event in self.feed:
            yield event
        await self.done.wait()

    async def ack(self, event: Event) -> bool:
        self.acked.append(event)
        return True


def events(*partitions: int, topic: str = "t") -> list[Event]:
    """One event per entry, on that partition, offsets counted per partition."""
    offsets: dict[int, int] = {}
    out = []
    for p in partitions:
        offsets[p] = offsets.get(p, -1) + 1
        out.append(Event(Message(topic, p, offsets[p]), f"{p}@{offsets[p]}".encode()))
    return out


async def run(stream: Stream, handler: Any, *, size: int, within: float, expect: int) -> None:
    pipeline = _BatchPipeline(stream, handler, WorkerConfig(batch_size=size, batch_within=within), "test")
    task = asyncio.ensure_future(pipeline.run())
    for _ in range(500):
        if len(stream.acked) >= expect:
            break
        await asyncio.sleep(0.01)
    stream.done.set()
    await task


def test_a_batch_closes_when_one_partition_has_batch_size_events() -> None:
    async def main() -> list[list[Record]]:
        batches: list[list[Record]] = []

        async def handle(records: list[Record]) -> None:
            batches.append(records)

        # Round-robin over two partitions, as faust delivers them: partition 0 reaches 3 at the 5th event.
        stream = Stream(events(0, 1, 0, 1, 0, 1))
        await run(stream, handle, size=3, within=0.05, expect=6)
        return batches

    batches = asyncio.run(main())
    assert [[(r.partition, r.offset) for r in batch] for batch in batches] == [
        [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2)],
        [(1, 2)],  # the rest, after batch_within
    ]
    assert batches[0][0] == Record("t", 0, 0, b"0@0")


def test_events_are_acked_only_after_their_batch_was_handled() -> None:
    async def main() -> tuple[list[int], Stream]:
        acked_when_called: list[int] = []
        stream = Stream(events(0, 0, 0, 0))

        async def handle(records: list[Record]) -> None:
            acked_when_called.append(len(stream.acked))
            await asyncio.sleep(0.02)
            assert len(stream.acked) == acked_when_called[-1]

        await run(stream, handle, size=2, within=1.0, expect=4)
        return acked_when_called, stream

    acked_when_called, stream = asyncio.run(main())
    assert acked_when_called == [0, 2]
    assert [e.message.offset for e in stream.acked] == [0, 1, 2, 3]


def test_a_failing_batch_is_never_acked(monkeypatch: pytest.MonkeyPatch) -> None:
    exits: list[str] = []
    # The real fatal() ends the process (os._exit) before anything is acked; here it only notes the call.
    monkeypatch.setattr(worker_module, "fatal", lambda event, **details: exits.append(event))

    async def main() -> Stream:
        stream = Stream(events(0, 1))

        async def handle(records: list[Record]) -> None:
            raise ValueError("a reducer bug")

        pipeline = _BatchPipeline(stream, handle, WorkerConfig(batch_size=1, batch_within=1.0), "test")
        task = asyncio.ensure_future(pipeline.run())
        for _ in range(500):
            if len(exits) >= 2:
                break
            await asyncio.sleep(0.01)
        stream.done.set()
        await task
        return stream

    stream = asyncio.run(main())
    assert exits == ["worker.batch_failed", "worker.batch_failed"]
    assert stream.acked == []
