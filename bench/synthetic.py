"""A realistic synthetic history of event envelopes, at any size, without going through the domain.

Recording a million events through ``PartnerProgram`` takes far too long on a
small machine, so the history is built from a *real* recorded sample (the
sample programme of :mod:`api.sample`, recorded once and cached as JSON lines
of envelopes under ``.prm/bench/``): the sample is cloned ``K`` times, each clone
with its own ids (partners, registrations, sales, contracts, refunds,
opportunities, conflicts, aggregate and event UUIDs, customer domains), its own
amounts (an integer factor 1-3 per clone, so sale totals and refunds stay
consistent) and its own business times (shifted by ``k`` minutes). Plan and
programme events are kept once (the clones share the plan ``STD``).

Clones are interleaved event by event (the original order, then the clone
index), so every partner's events keep the order the domain recorded, many
partners are active at once and sequences are strictly increasing;
``time`` (recording time) increases with the sequence. The event types and the
data shapes are exactly those the domain records.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from projections.envelope import parse_time

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".prm" / "bench"
PROGRAM_KINDS = ("prm.plan.", "prm.program.")

_BUSINESS_ID = re.compile(rb'"((?:P|R|S|CT|OPP|RF|C)-[0-9a-f][0-9a-f-]*)"')
_UUID = re.compile(rb'"([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-)([0-9a-f]{12})"')
_DOMAIN = re.compile(rb'"domain":"(?:https?://)?(?:www\.)?')
_AMOUNTS = ("unit_price_minor", "total_minor", "amount_minor", "refunded_after_minor", "refunded_before_minor")
_TIMES = ("occurred_at", "submitted_at", "at", "opened_at")


def sample_lines(seed: int = 5, scale: int = 5) -> list[bytes]:
    """The recorded sample programme as envelope JSON lines (recorded once into SQLite, then cached)."""
    cache = CACHE / f"sample-seed{seed}-scale{scale}.jsonl"
    if not cache.exists():
        from api.bootstrap import build_program
        from api.sample import generate, run_commands
        from api.settings import Settings
        from projections.store_reader import read_store

        cache.parent.mkdir(parents=True, exist_ok=True)
        print(f"recording the sample programme (seed {seed}, scale {scale}) into {cache} ...", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            program = build_program(Settings(store="sqlite", sqlite_path=Path(tmp) / "events.sqlite"))
            run_commands(program, generate(seed=seed, scale=scale))
            partial = cache.with_suffix(".tmp")
            with partial.open("wb") as out:
                for envelope in read_store(program):
                    out.write(envelope.to_json() + b"\n")
            partial.replace(cache)
            program.close()
    return cache.read_bytes().splitlines()


def _clone_text(raw: bytes, k: int) -> bytes:
    tag = f"-k{k:03d}".encode()
    raw = _BUSINESS_ID.sub(lambda m: b'"' + m.group(1) + tag + b'"', raw)
    raw = _UUID.sub(
        lambda m: b'"' + m.group(1) + b"%012x" % ((int(m.group(2), 16) + k * 0x9E3779B1) % (1 << 48)) + b'"', raw
    )
    return _DOMAIN.sub(b'"domain":"k%03d.' % k, raw)


def _shift(value: Any, minutes: int) -> Any:
    return (parse_time(value) + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")


def _vary(data: Any, factor: int, minutes: int) -> None:
    if isinstance(data, dict):
        for key, value in data.items():
            if isinstance(value, int) and not isinstance(value, bool) and key in _AMOUNTS:
                data[key] = value * factor
            elif isinstance(value, str) and key in _TIMES and value.endswith("Z"):
                data[key] = _shift(value, minutes)
            elif isinstance(value, dict | list):
                _vary(value, factor, minutes)
    elif isinstance(data, list):
        for item in data:
            _vary(item, factor, minutes)


def synthetic(count: int, *, seed: int = 5, scale: int = 5, start: datetime | None = None) -> Iterator[bytes]:
    """``count`` envelope JSON lines (sorted keys, as the relay publishes them), sequences 1..count."""
    lines = sample_lines(seed, scale)
    per_clone = sum(1 for raw in lines if not any(t in raw for t in (b'"prm.plan.', b'"prm.program.')))
    clones = max(1, -(-count // max(per_clone, 1)))
    clock = start or datetime(2026, 1, 1, tzinfo=UTC)
    sequence = 0
    for raw in lines:
        shared = b'"type":"prm.plan.' in raw or b'"type":"prm.program.' in raw
        for k in range(1 if shared else clones):
            if sequence >= count:
                return
            ce = orjson.loads(raw if k == 0 else _clone_text(raw, k))
            if k:
                _vary(ce["data"], 1 + k % 3, k)
            sequence += 1
            ce["sequence"] = str(sequence)
            ce["time"] = (clock + timedelta(microseconds=500 * sequence)).isoformat().replace("+00:00", "Z")
            yield orjson.dumps(ce, option=orjson.OPT_SORT_KEYS)
