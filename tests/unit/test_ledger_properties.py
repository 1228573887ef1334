"""Properties of the commission ledger over random scenarios recorded through the real domain.

A scenario is a random sequence of steps (sales with several lines, late
sales, refunds, tier overrides, registrations, plan versions, recalculations,
payouts, direct sales, a termination) for two partners, executed on a
``PartnerProgram`` with an advancing recording clock; every partner ends with
one more sale, so that a recalculation applied on the partner's next event
(the Kafka path) has had its chance to run.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Sequence
from datetime import timedelta
from fractions import Fraction
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domain.commission import fraction_from_str, round_half_even
from domain.errors import DomainError
from projections.envelope import EventEnvelope
from projections.ledger import CommissionLedger
from projections.ledger_queries import balances, lines_of, payable_minor, statement
from projections.memory import InMemoryProjectionStore
from projections.port import Doc, DocKey
from projections.runner import run_projections
from projections.store_reader import read_store
from projections.unit_of_work import UnitOfWork
from tests.unit.test_ledger import JAN1, PLAN, TERMS, LedgerWorld, utc

PARTNERS = ("P-1", "P-2")
PRICES = (0, 7, 500, 1_010, 3_000, 7_000, 12_000)
CATEGORIES = ("software", "hardware")

_lines = st.lists(
    st.tuples(st.integers(1, 3), st.sampled_from(PRICES), st.sampled_from(CATEGORIES)), min_size=1, max_size=3
)
_partner = st.sampled_from(PARTNERS)
_STEPS: dict[str, st.SearchStrategy[tuple[Any, ...]]] = {
    "sale": st.tuples(st.just("sale"), _partner, st.integers(0, 3), _lines, st.booleans()),
    "late sale": st.tuples(st.just("sale"), _partner, st.integers(4, 40), _lines, st.booleans()),
    "refund": st.tuples(st.just("refund"), _partner, st.integers(0, 9), st.sampled_from((4, 2, 1)), st.integers(0, 5)),
    "tier": st.tuples(st.just("tier"), _partner, st.sampled_from(("silver", "gold", "platinum")), st.integers(-10, 20)),
    "registration": st.tuples(st.just("registration"), _partner),
    "version": st.tuples(st.just("version"), st.integers(300, 900), st.integers(0, 30)),
    "recalc": st.tuples(st.just("recalc"), st.integers(0, 1), st.booleans()),
    "payout": st.tuples(st.just("payout"), _partner),
    "direct": st.tuples(st.just("direct"), st.sampled_from(PRICES)),
    "terminate": st.tuples(st.just("terminate"), st.just("P-2")),
}
_WEIGHTS = {"sale": 6, "late sale": 2, "refund": 4, "recalc": 4, "version": 4, "payout": 3}
_KINDS = [kind for kind in _STEPS for _ in range(_WEIGHTS.get(kind, 1))]
_step = st.sampled_from(_KINDS).flatmap(lambda kind: _STEPS[kind])
_timed = st.lists(st.tuples(_step, st.integers(1, 24 * 6)), min_size=3, max_size=20)


def _with_repricing(args: tuple[list[tuple[tuple[Any, ...], int]], int, int]) -> list[tuple[tuple[Any, ...], int]]:
    """Every scenario reprices retroactively at some point: a version effective 30 days back, then a
    recalculation of the quarter, so that adjustments (and refunds after them) are common."""
    steps, where, rate = args
    at = where % (len(steps) + 1)
    return [*steps[:at], (("version", rate, 30), 1), (("recalc", 0, True), 1), *steps[at:]]


scenarios = st.tuples(_timed, st.integers(0, 20), st.integers(300, 900)).map(_with_repricing)
PROPERTY_TERMS = {**TERMS, "hold_days": 7}

FAST = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def record(steps: Sequence[tuple[tuple[Any, ...], int]]) -> list[EventEnvelope]:
    """Run a scenario through the domain; refusals (domain errors) are simply skipped."""
    with LedgerWorld() as world:
        world.plan(terms=PROPERTY_TERMS)
        for partner_id in PARTNERS:
            world.partner(partner_id)
        clock = utc(2026, 1, 2)
        sales: dict[str, list[str]] = defaultdict(list)
        remaining: dict[str, int] = {}
        registrations: dict[str, str] = {}
        store = InMemoryProjectionStore()
        for counter, (step, hours) in enumerate(steps, start=1):
            clock += timedelta(hours=hours)
            kind = step[0]
            try:
                if kind == "sale":
                    _, partner_id, lag, lines, with_registration = step
                    sale_id = f"S-{counter}"
                    registration = registrations.get(partner_id) if with_registration else None
                    world.sale(
                        sale_id, partner_id, clock - timedelta(days=lag), *lines, registration=registration,
                        recorded=clock,
                    )  # fmt: skip
                    sales[partner_id].append(sale_id)
                    remaining[sale_id] = sum(q * p for q, p, _ in lines)
                elif kind == "refund":
                    _, partner_id, pick, divisor, lag = step
                    open_sales = [s for s in sales[partner_id] if remaining[s] > 0]
                    if open_sales:
                        sale_id = open_sales[pick % len(open_sales)]
                        refund = max(1, remaining[sale_id] // divisor)
                        world.refund(sale_id, f"RF-{counter}", refund, clock - timedelta(days=lag), recorded=clock)
                        remaining[sale_id] -= refund
                elif kind == "tier":
                    _, partner_id, tier, offset = step
                    world.tier(partner_id, tier, effective=clock + timedelta(days=offset), recorded=clock)
                elif kind == "registration":
                    registration_id = f"R-{counter}"
                    world._registration_actor = f"sales{counter}@partner.example"
                    world.registration(registration_id, step[1], when=clock)
                    registrations[step[1]] = registration_id
                elif kind == "version":
                    _, rate, offset = step
                    rates = {"registered": rate, "silver": 800, "gold": 1000, "platinum": 1200}
                    effective = max(JAN1 + timedelta(minutes=counter), clock - timedelta(days=offset))
                    world.version(PLAN, effective, {**PROPERTY_TERMS, "tier_rates_bps": rates}, recorded=clock)
                elif kind == "recalc":
                    _, back, whole_quarter = step
                    year, month = (clock.year, clock.month - back) if clock.month > back else (clock.year - 1, 12)
                    period = f"{year}-Q{(month - 1) // 3 + 1}" if whole_quarter else f"{year}-{month:02d}"
                    world.recalculate(PLAN, period, recorded=clock)
                elif kind == "payout":
                    run_projections(store, [CommissionLedger()], read_store(world.app))
                    payable = payable_minor(store.dump("ledger"), step[1], "USD", clock)
                    if payable > 0:
                        world.payout(f"PO-{counter}", step[1], clock, amount=payable)
                elif kind == "direct":
                    world.sale(f"S-{counter}", None, clock, step[1] or 1, recorded=clock)
                elif kind == "terminate":
                    world.terminate(step[1], when=clock)
            except DomainError:
                pass
        for partner_id in PARTNERS:
            clock += timedelta(hours=1)
            world.sale(f"S-last-{partner_id}", partner_id, clock, 100, recorded=clock)
        return world.events()


def project(events: Sequence[EventEnvelope], *, batch_size: int = 500, **options: Any) -> dict[DocKey, Doc]:
    store = InMemoryProjectionStore()
    run_projections(store, [CommissionLedger(**options)], events, batch_size=batch_size)
    return store.dump("ledger")


def lines(docs: dict[DocKey, Doc]) -> list[Doc]:
    return sorted((d for (k, _), d in docs.items() if k == "line"), key=lambda d: (d["sequence"], d["line_id"]))


# ============================================================================
# Arithmetic properties
# ============================================================================


@FAST
@given(scenarios)
def test_the_parts_of_a_line_sum_to_its_amount(steps: Sequence[tuple[tuple[Any, ...], int]]) -> None:
    docs = project(record(steps))
    accruals = [d for d in lines(docs) if d["kind"] == "accrual"]
    assert accruals
    for line in accruals:
        ex = line["explanation"]
        exact = sum((fraction_from_str(p["exact_commission"]) for p in ex["parts"]), Fraction(0))
        assert exact == fraction_from_str(ex["exact_commission"])
        assert round_half_even(exact) == line["amount_minor"] == ex["commission_minor"]
        if ex["reason"] is None:
            assert sum(p["amount_minor"] for p in ex["parts"]) == ex["amount_minor"]
            assert [p["start_minor"] for p in ex["parts"]][:1] == ([ex["q_before"]] if ex["amount_minor"] else [])
        else:
            assert line["amount_minor"] == 0 and ex["parts"] == []


@FAST
@given(scenarios)
def test_clawbacks_never_exceed_the_accrual_and_a_full_refund_nets_to_zero(
    steps: Sequence[tuple[tuple[Any, ...], int]],
) -> None:
    docs = project(record(steps))
    running: dict[tuple[str, int], int] = defaultdict(int)
    gross: dict[tuple[str, int], int] = defaultdict(int)
    for line in lines(docs):
        if line["kind"] == "payout":
            continue
        key = (line["sale_id"], line["sale_line"])
        running[key] += line["amount_minor"]
        if line["kind"] in ("accrual", "adjustment"):
            gross[key] = line["explanation"].get("gross_minor", line["amount_minor"])
        assert 0 <= running[key] <= gross[key], line["line_id"]  # never more clawed back than earned
    for (kind, sale_id), sale in docs.items():
        if kind == "sale":
            for sale_line in sale["lines"]:
                assert running[(sale_id, sale_line["n"])] == sale_line["net_minor"]
            if sale["refunded_minor"] == sale["total_minor"]:
                assert all(running[(sale_id, ln["n"])] == 0 for ln in sale["lines"])


# ============================================================================
# Delivery properties
# ============================================================================


@FAST
@given(scenarios, st.integers(1, 40), st.integers(0, 60))
def test_redelivery_and_a_republished_suffix_change_nothing(
    steps: Sequence[tuple[tuple[Any, ...], int]], batch: int, cut: int
) -> None:
    events = record(steps)
    store = InMemoryProjectionStore()
    run_projections(store, [CommissionLedger()], events, batch_size=batch)
    once = store.dump("ledger")
    for doc in once.values():  # JSON-ready: identical after a JSONB round trip (PostgreSQL store)
        assert json.loads(json.dumps(doc)) == doc
    run_projections(store, [CommissionLedger()], events, batch_size=batch)  # full redelivery
    run_projections(store, [CommissionLedger()], events[cut % len(events) :], batch_size=batch)  # suffix again
    assert store.dump("ledger") == once
    # the same events through a source with its own checkpoint: the reducer itself ignores them
    run_projections(store, [CommissionLedger()], events, source="kafka:prm.events.v1:3", batch_size=batch)
    assert store.dump("ledger") == once


@FAST
@given(scenarios, st.lists(st.integers(1, 50), min_size=1, max_size=3))
def test_batch_sizes_give_identical_documents(steps: Sequence[tuple[tuple[Any, ...], int]], sizes: list[int]) -> None:
    events = record(steps)
    reference = project(events)
    for size in sizes:
        assert project(events, batch_size=size) == reference


def _source_of(event: EventEnvelope) -> str:
    if event.kind in ("plan", "program"):
        return "kafka:prm.program.v1:0"
    return f"kafka:prm.events.v1:{event.partner_id or 'direct'}"


def interleave(events: Sequence[EventEnvelope], rng: random.Random) -> list[EventEnvelope]:
    """A Kafka-like delivery: each partner's events in order, programme events in order and before any event
    with a higher sequence, partners interleaved arbitrarily (a programme event may overtake lower ones)."""
    queues: dict[str, list[EventEnvelope]] = defaultdict(list)
    for event in events:
        queues[_source_of(event)].append(event)
    program = queues.pop("kafka:prm.program.v1:0", [])
    others = list(queues.values())
    out: list[EventEnvelope] = []
    while program or any(others):
        eligible: list[list[EventEnvelope]] = [program] if program else []
        eligible += [q for q in others if q and (not program or q[0].sequence < program[0].sequence)]
        queue = rng.choice(eligible)
        out.append(queue.pop(0))
    return out


def drive(events: Sequence[EventEnvelope], batch: int, **options: Any) -> dict[DocKey, Doc]:
    """Apply events as a Kafka worker would: one checkpoint per topic partition, commits every ``batch``."""
    store = InMemoryProjectionStore()
    ledger = CommissionLedger(**options)
    unit = UnitOfWork(store, ledger.name)
    for index, event in enumerate(events, start=1):
        unit.apply(ledger, event, _source_of(event))
        if index % batch == 0:
            unit.commit()
    unit.commit()
    return store.dump(ledger.name)


@FAST
@given(scenarios, st.integers(0, 2**32), st.integers(0, 2**32), st.integers(1, 20))
def test_interleaving_partners_differently_gives_identical_documents(
    steps: Sequence[tuple[tuple[Any, ...], int]], seed_a: int, seed_b: int, batch: int
) -> None:
    events = record(steps)
    first = drive(interleave(events, random.Random(seed_a)), batch, recalculate_on_request=False)
    second = drive(interleave(events, random.Random(seed_b)), 7, recalculate_on_request=False)
    assert first == second
    # and, every partner having an event after the last recalculation, the same as the total order
    assert first == project(events)


@FAST
@given(scenarios, st.integers(0, 24 * 120))
def test_as_of_queries_match_a_replay_up_to_that_instant(
    steps: Sequence[tuple[tuple[Any, ...], int]], hours: int
) -> None:
    events = record(steps)
    instant = utc(2026, 1, 1) + timedelta(hours=hours)
    live = project(events)
    replayed = project([e for e in events if e.time <= instant])
    for partner_id in PARTNERS:
        assert balances(live, partner_id, "USD", as_of=instant) == balances(replayed, partner_id, "USD", as_of=instant)
        assert lines_of(live, partner_id, as_of=instant) == lines_of(replayed, partner_id, as_of=instant)
        for month in ("2026-01", "2026-02", "2026-03", "2026-04"):
            assert statement(live, partner_id, "USD", month, as_of=instant) == statement(
                replayed, partner_id, "USD", month, as_of=instant
            )
