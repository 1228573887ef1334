"""The auditor's replay, in memory: rebuild, compare, explain, export.

The sample programme is recorded on the in-memory (POPO) event store in three
phases -- the first third of its steps, the rest, then a new plan version with
a recalculation request and a payout -- with the real recording clock. After
each phase the live ledger is rebuilt from the store and its statements and
balances are captured *as of the recording time of the phase's last event*:
those instants are taken from the recorded events themselves, so nothing waits
for time to pass and nothing patches a clock.
"""

from __future__ import annotations

import copy
import dataclasses
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka import TopicPartition

from api.sample import generate, run_commands
from consumers.history import HistoryError, KafkaHistory
from domain.application import PartnerProgram
from projections.audit import BALANCE, LINE_CATEGORY, diff, explain_line, render_explanation
from projections.envelope import EventEnvelope
from projections.exports import export_statement, format_minor, statement_csv, statement_html, statement_keys
from projections.ledger import LINE, CommissionLedger
from projections.ledger_queries import balances, payable_minor, statement
from projections.memory import InMemoryProjectionStore
from projections.port import Doc, DocKey
from projections.replay import (
    CachedStore,
    KafkaCoordinates,
    ReplayMismatch,
    SqliteProjectionStore,
    coordinates_of,
    open_target,
    replay,
    replay_meta,
    resume_point,
    schema_for,
)
from projections.runner import run_projections
from projections.store_reader import read_store

ADMIN = "auditor-test@prm.example"
Docs = dict[DocKey, Doc]


# ============================================================================
# The recorded history
# ============================================================================


@dataclass
class Phase:
    """What the live system showed at ``instant`` (the recording time of the phase's last event)."""

    instant: datetime
    last_sequence: int
    statements: dict[tuple[str, str, str], dict[str, Any]]
    balances: dict[tuple[str, str], dict[str, Any]]


@dataclass
class History:
    events: list[EventEnvelope]
    live: Docs
    phases: list[Phase]
    payout_partner: str
    payout_currency: str
    program: PartnerProgram


def live_ledger(events: list[EventEnvelope]) -> Docs:
    store = InMemoryProjectionStore()
    run_projections(store, [CommissionLedger()], events)
    return store.dump("ledger")


def capture(events: list[EventEnvelope]) -> Phase:
    docs = live_ledger(events)
    instant = events[-1].time
    keys = statement_keys(docs)
    return Phase(
        instant=instant,
        last_sequence=events[-1].sequence,
        statements={key: statement(docs, *key, as_of=instant) for key in keys},
        balances={(p, c): balances(docs, p, c, instant) for p, c in sorted({(p, c) for p, c, _ in keys})},
    )


@pytest.fixture(scope="module")
def history() -> Iterator[History]:
    app = PartnerProgram(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    steps = generate()
    third = len(steps) // 3
    phases = []
    run_commands(app, steps[:third])
    phases.append(capture(list(read_store(app))))
    run_commands(app, steps[third:])
    phases.append(capture(list(read_store(app))))

    # Phase 3: a plan version recorded late, a recalculation of 2025-Q2 with it, and a payout.
    app.publish_plan_version(
        "STD",
        effective_from=datetime(2025, 4, 1, tzinfo=UTC),
        terms={"tier_rates_bps": {"registered": 600, "silver": 900, "gold": 1100, "platinum": 1300}},
        actor=ADMIN,
        reason="retroactive uplift for Q2 2025",
    )
    app.request_recalculation("STD", period="2025-Q2", actor=ADMIN, reason="apply the Q2 uplift")
    docs = live_ledger(list(read_store(app)))
    now = datetime.now(UTC)
    payable = {
        (p, c): payable_minor(docs, p, c, now) for p, c, _ in statement_keys(docs) if payable_minor(docs, p, c, now) > 0
    }
    partner, currency = max(payable, key=lambda pc: (payable[pc], pc))
    app.record_payout(
        payout_id="PO-AUDIT-1",
        partner_id=partner,
        currency=currency,
        period="2026-01",
        amount_minor=payable[(partner, currency)],
        payable_minor=payable[(partner, currency)],
        actor=ADMIN,
        at=now,
    )
    events = list(read_store(app))
    phases.append(capture(events))
    yield History(events, live_ledger(events), phases, partner, currency, app)
    app.close()


def replayed(events: list[EventEnvelope], **kwargs: Any) -> Docs:
    store = InMemoryProjectionStore()
    replay(events, store, **kwargs)
    return store.dump("ledger")


def lines(docs: Docs) -> dict[str, Doc]:
    return {key: doc for (kind, key), doc in docs.items() if kind == LINE}


# ============================================================================
# The history itself
# ============================================================================


def test_the_history_has_every_kind_of_line_and_monotone_positions_and_times(history: History) -> None:
    kinds = {doc["kind"] for doc in lines(history.live).values()}
    assert kinds == {"accrual", "clawback", "adjustment", "payout"}
    sequences = [e.sequence for e in history.events]
    assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)
    times = [e.time for e in history.events]
    assert times == sorted(times)
    instants = [phase.instant for phase in history.phases]
    assert instants == sorted(instants) and len(set(instants)) == 3


# ============================================================================
# Full replay: identical
# ============================================================================


def test_a_full_replay_is_identical_line_by_line(history: History) -> None:
    replay_docs = replayed(history.events)
    report = diff(history.live, replay_docs)
    assert report.identical, report.summary()
    assert report.compared_lines == report.live_lines == report.replayed_lines == len(lines(history.live))
    assert report.balances_compared > 20
    assert "IDENTICAL" in report.summary()
    assert report.to_csv() == "category,partner_id,currency,key,field,live,replayed\n"
    # not only what the queries show: every document is the same
    assert replay_docs == history.live


@pytest.mark.parametrize("suffix", [".sqlite", ".json"])
def test_file_targets_give_the_same_ledger_and_resume_across_processes(
    history: History, tmp_path: Path, suffix: str
) -> None:
    path = str(tmp_path / f"replay{suffix}")
    half = len(history.events) // 2
    target = open_target(path)
    first = replay(history.events[:half], target.store, batch_size=400, source="store")
    target.close()  # the process ends

    target = open_target(path)
    assert resume_point(target.store) == history.events[half - 1].sequence
    rest = [e for e in history.events if e.sequence > resume_point(target.store)]
    second = replay(rest, target.store, batch_size=400, source="store")
    assert first.applied + second.applied == len(history.events)
    assert second.resumed_from == history.events[half - 1].sequence
    report = diff(history.live, target.dump())
    meta = replay_meta(target.store)
    target.close()
    assert report.identical, report.summary()
    assert meta is not None and meta["complete"] and meta["last_sequence"] == history.events[-1].sequence
    assert meta["last_recorded_at"] is not None


def test_the_cached_sqlite_target_keeps_exactly_what_the_file_holds(history: History, tmp_path: Path) -> None:
    """The cache keeps the committed documents themselves (no copy): nothing may change one after its commit."""
    path = tmp_path / "cached.sqlite"
    target = open_target(str(path))
    assert isinstance(target.store, CachedStore)
    replay(history.events, target.store, batch_size=97, source="store")
    cached = target.dump()
    # what a reader of the cache sees cannot change the cache either
    for doc in target.store.load_kind("ledger", LINE).values():
        copy.deepcopy(doc).clear()
    target.close()
    on_disk = SqliteProjectionStore(path)
    try:
        assert on_disk.dump("ledger") == cached == history.live
    finally:
        on_disk.close()


def test_a_target_name_is_a_postgres_schema_or_a_local_sqlite_file(tmp_path: Path) -> None:
    assert schema_for("q1_2026") == "replay_q1_2026"
    for bad in ("", "Q1", "a-b", "x" * 49, "public; drop"):
        with pytest.raises(ValueError):
            schema_for(bad)
    target = open_target("audit", database_url=None, default_dir=tmp_path)
    assert target.kind == "sqlite" and target.where.endswith("replay_audit.sqlite")
    target.close()
    with pytest.raises(ValueError, match="file"):
        open_target(str(tmp_path / "replay.txt"))


# ============================================================================
# Tampering: the diff fails and names the line
# ============================================================================


def tampered(docs: Docs, line_id: str, change: Any) -> Docs:
    copied = copy.deepcopy(docs)
    change(copied[(LINE, line_id)])
    return copied


def an_accrual_with_parts(docs: Docs) -> str:
    return next(
        key
        for key, doc in sorted(lines(docs).items())
        if doc["kind"] == "accrual" and len(doc["explanation"]["parts"]) > 1
    )


def test_tampering_with_an_amount_names_the_line_and_its_balance(history: History) -> None:
    replay_docs = replayed(history.events)
    line_id = an_accrual_with_parts(replay_docs)
    line = replay_docs[(LINE, line_id)]

    def add_one(doc: Doc) -> None:
        doc["amount_minor"] += 1

    report = diff(history.live, tampered(replay_docs, line_id, add_one))
    assert not report.identical
    assert report.keys_with_differences(LINE_CATEGORY) == [line_id]
    assert [(d.field, d.live, d.replayed) for d in report.differences if d.category == LINE_CATEGORY] == [
        ("amount_minor", str(line["amount_minor"]), str(line["amount_minor"] + 1))
    ]
    assert report.keys_with_differences(BALANCE) == [f"{line['partner_id']}/{line['currency']}"]
    assert line_id in report.summary() and "DIFFERENT" in report.summary()
    assert f"line,{line['partner_id']},{line['currency']},{line_id},amount_minor," in report.to_csv()


def test_tampering_with_a_status_names_the_line(history: History) -> None:
    replay_docs = replayed(history.events)
    line_id = an_accrual_with_parts(replay_docs)

    def hold_for_ever(doc: Doc) -> None:
        doc["payable_at"] = "2999-01-01T00:00:00Z"

    report = diff(history.live, tampered(replay_docs, line_id, hold_for_ever))
    assert report.keys_with_differences(LINE_CATEGORY) == [line_id]
    fields = {d.field: (d.live, d.replayed) for d in report.differences if d.key == line_id}
    assert fields["status"] == ('"payable"', '"accrued"')
    assert "payable_at" in fields


def test_tampering_with_an_explanation_names_the_line_and_the_path(history: History) -> None:
    replay_docs = replayed(history.events)
    line_id = an_accrual_with_parts(replay_docs)

    def rewrite(doc: Doc) -> None:
        doc["explanation"]["parts"][1]["extra_bps"] += 100

    report = diff(history.live, tampered(replay_docs, line_id, rewrite))
    assert [(d.key, d.field) for d in report.differences] == [(line_id, "explanation.parts[1].extra_bps")]
    assert report.keys_with_differences(BALANCE) == []  # the amount is the same: only the explanation lies


def test_a_missing_line_and_an_extra_line_are_differences(history: History) -> None:
    replay_docs = replayed(history.events)
    line_id = an_accrual_with_parts(replay_docs)
    missing = copy.deepcopy(replay_docs)
    del missing[(LINE, line_id)]
    report = diff(history.live, missing)
    assert [(d.key, d.field) for d in report.differences if d.category == LINE_CATEGORY] == [(line_id, "presence")]
    report = diff(missing, replay_docs)
    assert [(d.key, d.field, d.live) for d in report.differences if d.category == LINE_CATEGORY] == [
        (line_id, "presence", "")
    ]


def test_report_files(history: History, tmp_path: Path) -> None:
    replay_docs = replayed(history.events)
    line_id = an_accrual_with_parts(replay_docs)
    report = diff(history.live, tampered(replay_docs, line_id, lambda d: d.update(amount_minor=0)))
    paths = report.write(tmp_path / "report")
    assert [p.name for p in paths] == ["summary.txt", "summary.json", "differences.csv"]
    summary = orjson.loads(paths[1].read_bytes())
    assert summary["identical"] is False and summary["lines_with_differences"] == [line_id]


# ============================================================================
# As of an instant: what the live system showed then
# ============================================================================


def test_replays_as_of_each_phase_give_exactly_the_statements_shown_then(history: History) -> None:
    for number, phase in enumerate(history.phases, start=1):
        store = InMemoryProjectionStore()
        stats = replay(history.events, store, as_of=phase.instant)
        docs = store.dump("ledger")
        assert stats.applied == len([e for e in history.events if e.time <= phase.instant])
        assert stats.time_inversions == 0
        keys = statement_keys(docs)
        assert {key: statement(docs, *key, as_of=phase.instant) for key in keys} == phase.statements, number
        pairs = sorted({(p, c) for p, c, _ in keys})
        assert {(p, c): balances(docs, p, c, phase.instant) for p, c in pairs} == phase.balances, number
        # and the final live ledger, asked as of that instant, agrees line by line
        report = diff(history.live, docs, as_of=phase.instant)
        assert report.identical, report.summary()
    first, second, third = history.phases
    assert first.statements != second.statements != third.statements


def test_the_payout_is_invisible_before_it_was_recorded(history: History) -> None:
    _, second, third = history.phases
    key = (history.payout_partner, history.payout_currency)
    assert third.balances[key]["payouts"] > 0
    assert second.balances[key]["payouts"] == 0
    docs = replayed(history.events, as_of=second.instant)
    assert not [doc for doc in lines(docs).values() if doc["kind"] in ("payout", "adjustment")]
    # the live ledger as of the second instant shows the lines the payout paid later as not paid yet
    report = diff(history.live, docs, as_of=second.instant)
    assert report.identical


def test_an_as_of_cut_that_is_not_a_prefix_is_counted(history: History) -> None:
    events = history.events[:50]
    cut = events[20].time
    # a writer that took its timestamp late but got an earlier position
    skewed = [dataclasses.replace(e, time=cut + timedelta(seconds=1)) if i == 10 else e for i, e in enumerate(events)]
    stats = replay(skewed, InMemoryProjectionStore(), as_of=cut)
    assert stats.filtered == 50 - 21 + 1
    assert stats.time_inversions == 10  # the kept events 11..20 come after the dropped event 10


# ============================================================================
# One partner
# ============================================================================


def test_a_partner_replay_matches_that_partner_in_the_live_ledger(history: History) -> None:
    partner = history.payout_partner
    store = InMemoryProjectionStore()
    stats = replay(history.events, store, partner=partner)
    docs = store.dump("ledger")
    assert {doc["partner_id"] for doc in lines(docs).values()} == {partner}
    assert stats.filtered > stats.applied
    report = diff(history.live, docs, partner=partner)
    assert report.identical, report.summary()
    assert report.compared_lines == len([d for d in lines(history.live).values() if d["partner_id"] == partner])
    # against every partner, the others are missing
    assert not diff(history.live, docs).identical


# ============================================================================
# Resuming
# ============================================================================


class Interrupted(Exception):
    pass


def test_an_interrupted_replay_continues_after_its_last_committed_batch(history: History) -> None:
    store = InMemoryProjectionStore()
    batches = []

    def crash_on_third(seen: int, last: int) -> None:
        batches.append(last)
        if len(batches) == 3:
            raise Interrupted

    with pytest.raises(Interrupted):
        replay(history.events, store, batch_size=500, progress=crash_on_third)
    assert resume_point(store) == batches[-1] == history.events[1499].sequence
    meta = replay_meta(store)
    assert meta is not None and meta["complete"] is False

    # re-running over the whole history skips what was committed; over the rest, continues
    again = replay(history.events, store, batch_size=500)
    assert again.already_applied == 1500 and again.applied == len(history.events) - 1500
    assert diff(history.live, store.dump("ledger")).identical

    with pytest.raises(ReplayMismatch):
        replay(history.events, store, partner="P-0001")
    with pytest.raises(ReplayMismatch):
        replay(history.events, store, as_of=history.phases[0].instant)
    fresh = replay(history.events, store, partner="P-0001", fresh=True)
    assert fresh.resumed_from == 0


def test_a_history_out_of_order_is_refused(history: History) -> None:
    events = [history.events[1], history.events[0], *history.events[2:10]]
    with pytest.raises(ValueError, match="out of order"):
        replay(events, InMemoryProjectionStore())


# ============================================================================
# Explanations
# ============================================================================


def test_explain_gives_events_plan_version_tier_parts_and_arithmetic(history: History) -> None:
    docs = history.live
    line_id = next(
        key
        for key, doc in sorted(lines(docs).items())
        if doc["kind"] == "accrual" and doc["explanation"]["tier_change"] and len(doc["explanation"]["parts"]) > 1
    )
    line = docs[(LINE, line_id)]
    explained = explain_line(docs, line_id, coordinates={line["sequence"]: KafkaCoordinates("prm.events.v1", 3, 42)})
    roles = {e["role"]: e for e in explained["events"]}
    assert roles["source"]["sequence"] == line["sequence"]
    assert roles["source"]["type"] == "prm.sale.recorded.v1"
    assert roles["source"]["kafka"] == {"topic": "prm.events.v1", "partition": 3, "offset": 42}
    assert roles["plan version"]["kafka"] is None and roles["plan version"]["event_id"]
    assert roles["tier change in force"]["sequence"] == line["explanation"]["tier_change"]["sequence"]
    assert explained["plan_version"]["version"] == line["explanation"]["plan"]["version"]
    assert explained["tier"]["tier"] == line["explanation"]["tier"]
    assert len(explained["parts"]) > 1 and any(p["extra_bps"] > 0 for p in explained["parts"])
    assert explained["formula"].startswith("round_half_even(")
    text = render_explanation(explained)
    assert "prm.events.v1[3]@42" in text and "accelerator parts:" in text and "arithmetic:" in text


def test_explain_an_adjustment_a_clawback_and_a_payout(history: History) -> None:
    docs = history.live
    by_kind: dict[str, str] = {}
    for key, doc in sorted(lines(docs).items()):
        by_kind.setdefault(doc["kind"], key)
    adjustment = explain_line(docs, by_kind["adjustment"])
    assert {e["role"] for e in adjustment["events"]} >= {"source", "recalculation request", "plan version"}
    assert adjustment["plan_version"]["version"] == 3
    clawback = explain_line(docs, by_kind["clawback"])
    roles = {e["role"] for e in clawback["events"]}
    assert "source" in roles and any(role.startswith("source of L-") for role in roles)
    assert clawback["plan_version"] is not None and clawback["parts"]
    payout = explain_line(docs, by_kind["payout"])
    assert payout["formula"].startswith("pays ")
    with pytest.raises(KeyError):
        explain_line(docs, "L-NOPE-1")


# ============================================================================
# Exports: deterministic bytes
# ============================================================================


def test_exports_are_byte_identical_whatever_the_batch_size(history: History, tmp_path: Path) -> None:
    instant = history.phases[-1].instant
    outputs: list[dict[tuple[str, str, str, str], bytes]] = []
    for batch_size, target in ((1, None), (97, str(tmp_path / "r.sqlite")), (10_000, str(tmp_path / "r.json"))):
        if target is None:
            store = InMemoryProjectionStore()
            replay(history.events, store, batch_size=batch_size)
            docs = store.dump("ledger")
        else:
            opened = open_target(target)
            replay(history.events, opened.store, batch_size=batch_size)
            docs = opened.dump()
            opened.close()
        outputs.append(
            {
                (*key, fmt): export_statement(docs, *key, fmt, as_of=instant)
                for key in statement_keys(docs)
                for fmt in ("csv", "html")
            }
        )
    live = {
        (*key, fmt): export_statement(history.live, *key, fmt, as_of=instant)
        for key in statement_keys(history.live)
        for fmt in ("csv", "html")
    }
    assert outputs[0] == outputs[1] == outputs[2] == live
    assert len(live) == 2 * len(statement_keys(history.live)) > 40


def test_the_csv_statement_has_header_opening_lines_totals_and_closing(history: History) -> None:
    docs = history.live
    partner, currency = history.payout_partner, history.payout_currency
    month = next(m for p, c, m in statement_keys(docs) if (p, c) == (partner, currency))
    instant = history.phases[-1].instant
    text = statement_csv(docs, partner, currency, month, as_of=instant).decode()
    rows = [row.split(",", 4)[0] for row in text.splitlines()]
    assert rows[0] == "record" and rows[1] == "statement" and rows[2] == "opening"
    data = statement(docs, partner, currency, month, as_of=instant)
    assert rows.count("line") == len(data["lines"]) > 0
    assert rows[-5:] == ["accruals", "clawbacks", "adjustments", "payouts", "closing"]
    assert text.endswith(f",{data['closing_balance']},\n")
    assert "\r" not in text


def test_the_html_statement_is_self_contained_and_explains_each_line(history: History) -> None:
    docs = history.live
    partner, currency = history.payout_partner, history.payout_currency
    month = next(m for p, c, m in statement_keys(docs) if (p, c) == (partner, currency))
    page = statement_html(docs, partner, currency, month, as_of=history.phases[-1].instant).decode()
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    assert "http://" not in page and "https://" not in page and "<script" not in page
    data = statement(docs, partner, currency, month, as_of=history.phases[-1].instant)
    assert page.count('<tbody class="line">') == len(data["lines"])
    assert page.count("<pre>") == len(data["lines"])
    assert "Generated at" not in page
    stamped = statement_html(docs, partner, currency, month, generated_at=datetime(2026, 4, 1, tzinfo=UTC))
    assert "Generated at 2026-04-01T00:00:00Z" in stamped.decode()


def test_money_formats() -> None:
    assert format_minor(123456, "USD") == "1234.56"
    assert format_minor(-5, "USD", grouped=True) == "-0.05"
    assert format_minor(1234567, "VND", grouped=True) == "1,234,567"
    assert format_minor(1234, "KWD") == "1.234"
    with pytest.raises(ValueError):
        export_statement({}, "P-1", "USD", "2026-03", "pdf")


# ============================================================================
# The Kafka history: k-way merge and duplicates, with a stand-in consumer
# ============================================================================


@dataclass
class FakeRecord:
    offset: int
    value: bytes


class FakeConsumer:
    """Just what ``KafkaHistory`` uses of a ``KafkaConsumer``, over in-memory partitions."""

    def __init__(self, partitions: dict[tuple[str, int], list[bytes]], per_poll: int = 3) -> None:
        self.logs = {TopicPartition(t, p): values for (t, p), values in partitions.items()}
        self.positions: dict[TopicPartition, int] = {}
        self.paused: set[TopicPartition] = set()
        self.per_poll = per_poll
        self.closed = False
        self.truncated: dict[tuple[str, int], int] = {}

    def partitions_for_topic(self, topic: str) -> set[int]:
        return {tp.partition for tp in self.logs if tp.topic == topic}

    def assign(self, tps: list[TopicPartition]) -> None:
        self.positions = dict.fromkeys(tps, 0)

    def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.truncated.get((tp.topic, tp.partition), 0) for tp in tps}

    def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: len(self.logs[tp]) for tp in tps}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.positions[tp] = offset

    def position(self, tp: TopicPartition) -> int:
        return self.positions[tp]

    def pause(self, *tps: TopicPartition) -> None:
        self.paused.update(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.paused.difference_update(tps)

    def poll(self, timeout_ms: int = 0) -> dict[TopicPartition, list[FakeRecord]]:
        out = {}
        for tp, position in self.positions.items():
            if tp in self.paused or position >= len(self.logs[tp]):
                continue
            values = self.logs[tp][position : position + self.per_poll]
            out[tp] = [FakeRecord(position + i, value) for i, value in enumerate(values)]
            self.positions[tp] = position + len(values)
        return out

    def close(self, autocommit: bool = False) -> None:
        self.closed = True


def publish_like_the_relay(events: list[EventEnvelope], partitions: int = 4) -> dict[tuple[str, int], list[bytes]]:
    logs: dict[tuple[str, int], list[bytes]] = defaultdict(list)
    logs[("prm.program.v1", 0)] = []
    for p in range(partitions):
        logs[("prm.events.v1", p)] = []
    for event in events:
        if event.kind in ("plan", "program"):
            logs[("prm.program.v1", 0)].append(event.to_json())
        else:
            key = event.partner_id or "direct"
            logs[("prm.events.v1", sum(key.encode()) % partitions)].append(event.to_json())
    return dict(logs)


def republish_suffixes(logs: dict[tuple[str, int], list[bytes]], every: int, back: int) -> int:
    """After every ``every`` records of a partition, publish the ``back`` previous ones again (a relay restart)."""
    added = 0
    for key, values in logs.items():
        out: list[bytes] = []
        for i, value in enumerate(values, start=1):
            out.append(value)
            if i % every == 0:
                out.extend(values[max(0, i - back) : i])
                added += min(back, i)
        logs[key] = out
    return added


def kafka_history(logs: dict[tuple[str, int], list[bytes]], **kwargs: Any) -> KafkaHistory:
    """A history read like ``read_history`` reads it: one consumer per partition."""
    return KafkaHistory(
        FakeConsumer(logs), ["prm.events.v1", "prm.program.v1"], consumer_factory=lambda: FakeConsumer(logs), **kwargs
    )


def test_the_kafka_history_is_merged_in_sequence_order_without_duplicates(history: History) -> None:
    logs = publish_like_the_relay(history.events)
    added = republish_suffixes(logs, every=37, back=5)
    # a duplicate on another partition too (keys moved by a partition change)
    logs[("prm.events.v1", 0)].append(logs[("prm.events.v1", 1)][3])
    reader = kafka_history(logs)
    merged = list(reader)
    assert [e.sequence for e in merged] == [e.sequence for e in history.events]
    assert merged == history.events
    assert reader.stats.duplicates == added + 1
    assert reader.stats.records == len(history.events) + added + 1 == reader.total_records
    assert reader.consumer.closed

    store = InMemoryProjectionStore()
    reader = kafka_history(logs)
    replay(reader, store, batch_size=300, source="kafka")
    assert diff(history.live, store.dump("ledger")).identical
    # every replayed event has its coordinates, committed with the ledger
    found = coordinates_of(store, [e.sequence for e in history.events])
    assert len(found) == len(history.events)
    first_sale = next(e for e in history.events if e.type == "prm.sale.recorded.v1")
    where = found[first_sale.sequence]
    assert orjson.loads(logs[(where.topic, where.partition)][where.offset])["id"] == first_sale.id


def test_a_kafka_replay_resumes_from_the_committed_offsets(history: History) -> None:
    logs = publish_like_the_relay(history.events)
    republish_suffixes(logs, every=50, back=7)
    store = InMemoryProjectionStore()

    def crash(seen: int, last: int) -> None:
        if seen >= 1000:
            raise Interrupted

    with pytest.raises(Interrupted):
        replay(kafka_history(logs), store, batch_size=500, progress=crash, source="kafka")
    from projections.replay import kafka_offsets

    offsets = kafka_offsets(store)
    resumed = resume_point(store)
    assert resumed == history.events[999].sequence and sum(offsets.values()) >= 1000
    reader = kafka_history(logs, start_offsets=offsets, after_sequence=resumed)
    assert reader.total_records < sum(len(v) for v in logs.values()) - 1000
    stats = replay(reader, store, batch_size=500, source="kafka")
    assert stats.applied == len(history.events) - 1000
    assert diff(history.live, store.dump("ledger")).identical


def test_a_partition_out_of_order_or_two_events_at_one_position_is_refused(history: History) -> None:
    logs = publish_like_the_relay(history.events[:200])
    partition = logs[("prm.events.v1", 1)]
    partition[2], partition[5] = partition[5], partition[2]
    with pytest.raises(HistoryError, match="not in event-store order"):
        list(kafka_history(logs))

    logs = publish_like_the_relay(history.events[:200])
    forged = orjson.loads(logs[("prm.events.v1", 2)][0])
    forged["id"] = "00000000-0000-0000-0000-000000000000"
    logs[("prm.events.v1", 3)].insert(0, orjson.dumps(forged))
    logs[("prm.events.v1", 3)].sort(key=lambda raw: int(orjson.loads(raw)["sequence"]))
    with pytest.raises(HistoryError, match="share a sequence"):
        list(kafka_history(logs))

    logs = publish_like_the_relay(history.events[:20])
    logs[("prm.events.v1", 0)].insert(0, b"not json")
    with pytest.raises(HistoryError, match="not an event envelope"):
        list(kafka_history(logs))


def test_a_truncated_partition_is_refused(history: History) -> None:
    logs = publish_like_the_relay(history.events[:100])
    consumer = FakeConsumer(logs)
    consumer.truncated[("prm.events.v1", 2)] = 3
    with pytest.raises(HistoryError, match="truncated"):
        KafkaHistory(consumer, ["prm.events.v1", "prm.program.v1"])
    with pytest.raises(HistoryError, match="does not exist"):
        KafkaHistory(FakeConsumer(logs), ["prm.events.v1", "other.prm.program.v1"])


def test_memory_stays_bounded_when_one_partition_runs_ahead(history: History) -> None:
    logs = publish_like_the_relay(history.events)
    # the merge waits on one partition while others hold many polls' worth of records in Kafka
    readers: list[FakeConsumer] = []

    def one_partition() -> FakeConsumer:
        readers.append(FakeConsumer(logs, per_poll=40))
        return readers[-1]

    reader = KafkaHistory(FakeConsumer(logs), ["prm.events.v1", "prm.program.v1"], consumer_factory=one_partition)
    largest = 0
    merged = []
    for event in reader:
        merged.append(event.sequence)
        largest = max(largest, *(len(state.buffer) for state in reader._partitions.values()))
    assert merged == [e.sequence for e in history.events]
    # never more than one poll per partition, nothing paused, every per-partition consumer closed
    assert largest <= 40
    assert len(readers) == len([log for log in logs.values() if log])
    assert all(len(r.positions) == 1 and not r.paused and r.closed for r in readers)


def test_one_consumer_for_every_partition_still_reads_the_whole_history(history: History) -> None:
    logs = publish_like_the_relay(history.events)
    consumer = FakeConsumer(logs, per_poll=40)
    merged = [event.sequence for event in KafkaHistory(consumer, ["prm.events.v1", "prm.program.v1"])]
    assert merged == [e.sequence for e in history.events]
    assert not consumer.paused and consumer.closed


# ============================================================================
# The commands, on the embedded configuration (no database: live = in process)
# ============================================================================


class _Borrowed:
    """The module's programme, lent to a command that closes what it builds."""

    def __init__(self, program: PartnerProgram) -> None:
        self._program = program

    def __getattr__(self, name: str) -> Any:
        return getattr(self._program, name)

    def close(self) -> None:
        pass


def test_the_commands_replay_compare_explain_and_export(
    history: History, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    import api.cli_audit
    from api.cli import app

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PRM_STORE", "sqlite")
    monkeypatch.setenv("PRM_DATABASE_URL", "")
    monkeypatch.setattr(api.cli_audit, "build_program", lambda settings: _Borrowed(history.program))
    runner = CliRunner()

    result = runner.invoke(app, ["replay", "--source", "store", "--into", "all", "--batch-size", "700", "--json"])
    assert result.exit_code == 0, result.output
    outcome = orjson.loads(result.stdout)
    assert outcome["applied"] == len(history.events) and outcome["target"].endswith("replay_all.sqlite")
    assert (tmp_path / ".prm" / "replay_all.sqlite").exists()

    result = runner.invoke(app, ["audit", "diff", "--replayed", "all", "--report", "report"])
    assert result.exit_code == 0, result.output
    assert "IDENTICAL" in result.stdout
    assert (tmp_path / "report" / "differences.csv").read_text() == (
        "category,partner_id,currency,key,field,live,replayed\n"
    )

    second = history.phases[1]
    as_of = second.instant.isoformat()
    result = runner.invoke(app, ["replay", "--source", "store", "--as-of", as_of, "--into", "then.json"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["audit", "diff", "--replayed", "then.json", "--json"])
    assert result.exit_code == 0, result.output
    assert orjson.loads(result.stdout)["as_of"] == second.instant.isoformat().replace("+00:00", "Z")
    # resuming with another instant is refused; comparing the earlier replay now shows what came later
    result = runner.invoke(app, ["replay", "--source", "store", "--into", "then.json"])
    assert result.exit_code == 2 and "resume it with the same parameters" in result.output
    result = runner.invoke(app, ["audit", "diff", "--replayed", "then.json", "--as-of", "2999-01-01T00:00:00Z"])
    assert result.exit_code == 2

    line_id = an_accrual_with_parts(history.live)
    result = runner.invoke(app, ["explain", line_id, "--replayed", "all"])
    assert result.exit_code == 0, result.output
    assert "accelerator parts:" in result.stdout and "arithmetic:" in result.stdout
    result = runner.invoke(app, ["explain", line_id, "--json"])
    assert orjson.loads(result.stdout)["line_id"] == line_id
    assert runner.invoke(app, ["explain", "L-NOPE-1"]).exit_code == 2

    partner, currency = history.payout_partner, history.payout_currency
    month = next(m for p, c, m in statement_keys(history.live) if (p, c) == (partner, currency))
    at = history.phases[-1].instant.isoformat()
    for fmt, source in (("csv", []), ("csv", ["--replayed", "all"]), ("html", [])):
        out = f"statement-{fmt}-{len(source)}.{fmt}"
        args = ["statement-export", partner, "--month", month, "--currency", currency, "--format", fmt]
        result = runner.invoke(app, [*args, "--out", out, "--as-of", at, *source])
        assert result.exit_code == 0, result.output
    assert (tmp_path / "statement-csv-0.csv").read_bytes() == (tmp_path / "statement-csv-2.csv").read_bytes()
    assert (tmp_path / "statement-csv-0.csv").read_bytes() == export_statement(
        history.live, partner, currency, month, "csv", as_of=history.phases[-1].instant
    )

    # a tampered replay fails the audit and names the line
    target = open_target(str(tmp_path / ".prm" / "replay_all.sqlite"))
    doc = target.store.load("ledger", [(LINE, line_id)])[(LINE, line_id)]
    target.store.commit("ledger", {(LINE, line_id): {**doc, "amount_minor": doc["amount_minor"] + 1}}, [], [])
    target.close()
    result = runner.invoke(app, ["audit", "diff", "--replayed", "all"])
    assert result.exit_code == 1 and line_id in result.stdout


def test_garbage_cycles_made_during_a_batch_are_collected_before_the_heap_is_frozen(history: History) -> None:
    """A frozen cycle is never collected: each batch's cyclic garbage is collected before the freeze."""
    import weakref

    alive: set[int] = set()

    class Cycle:
        def __init__(self) -> None:
            self.me = self

    class MakesCycles:
        name = "cycles"

        def handles(self, event: EventEnvelope) -> bool:
            return True

        def apply(self, event: EventEnvelope, view: Any) -> None:
            cycle = Cycle()  # garbage as soon as this returns, collectable only by the cyclic collector
            alive.add(event.sequence)
            weakref.finalize(cycle, alive.discard, event.sequence)

    most = []
    replay(
        history.events[:1500],
        InMemoryProjectionStore(),
        [MakesCycles()],
        batch_size=100,
        progress=lambda seen, last: most.append(len(alive)),
    )
    # after each commit, only the cycles of that batch's events could still be alive, never the earlier ones
    assert most and max(most) <= 100


def test_the_cached_target_keeps_documents_at_their_size(tmp_path: Path) -> None:
    """orjson.dumps returns bytes holding its whole output buffer (~32 KB); the cache keeps exact copies."""
    import tracemalloc

    import projections.replay

    target = open_target(str(tmp_path / "sized.sqlite"))
    docs = {("line", f"L-{n}"): {"n": n, "text": "x" * 1700} for n in range(200)}
    tracemalloc.start()
    try:
        target.store.commit("ledger", docs, [], [])
        snapshot = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    held = snapshot.filter_traces([tracemalloc.Filter(True, projections.replay.__file__)]).statistics("filename")
    target.close()
    assert sum(stat.size for stat in held) < 200 * 4_000
