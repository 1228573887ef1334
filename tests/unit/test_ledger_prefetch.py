"""``CommissionLedger.prefetch_keys``: the documents it names are the ones ``apply`` reads.

The history is recorded through the real application (``LedgerWorld`` of
``test_ledger``): a plan with two versions, partners with contracts, tier
changes, registrations (approved, rejected), sales with and without a
registration, a refund, payouts, a recalculation request, a termination.
"""

from __future__ import annotations

from datetime import timedelta

from projections.envelope import EventEnvelope
from projections.ledger import CommissionLedger
from projections.memory import InMemoryProjectionStore
from projections.port import Doc, DocKey, prefetcher
from projections.runner import run_projections
from projections.unit_of_work import UnitOfWork
from tests.unit.test_ledger import JAN1, PLAN, TERMS, LedgerWorld, day, utc


class RecordingUnit(UnitOfWork):
    """A unit of work that records every ``get``."""

    def __init__(self, store: InMemoryProjectionStore, projection: str) -> None:
        super().__init__(store, projection)
        self.reads: list[DocKey] = []

    def get(self, kind: str, key: str) -> Doc | None:
        self.reads.append((kind, key))
        return super().get(kind, key)


class CountingStore(InMemoryProjectionStore):
    """Counts ``load`` calls and the keys they ask for."""

    def __init__(self) -> None:
        super().__init__()
        self.loads = 0
        self.single_loads = 0

    def load(self, projection: str, keys: object) -> dict[DocKey, Doc]:
        wanted = list(keys)  # type: ignore[call-overload]
        self.loads += 1
        if len(wanted) == 1:
            self.single_loads += 1
        return super().load(projection, wanted)


def _history() -> list[EventEnvelope]:
    with LedgerWorld() as world:
        world.plan()
        world.partner("P-1")
        world.partner("P-2", when=utc(2025, 12, 20))
        world.tier("P-1", "gold", effective=day(1), recorded=day(1))
        world.registration("R-1", "P-1", when=day(2))
        world.registration("R-2", "P-2", when=day(2, 1), approve=False)
        world.app.reject_registration("R-2", actor="admin@prm.example", reason_code="duplicate", at=day(2, 2))
        world.sale("S-1", "P-1", day(3), 8_000, (2, 3_000, "hardware"), registration="R-1")
        world.sale("S-2", "P-2", day(3, 1), 12_345)
        world.sale("S-3", "P-1", day(4), 25_000)
        world.refund("S-1", "RF-1", 5_000, day(5))
        world.version(PLAN, JAN1 + timedelta(days=2), {**TERMS, "tier_rates_bps": {"registered": 600, "silver": 900,
                      "gold": 1100, "platinum": 1300}}, recorded=day(6))  # fmt: skip
        world.recalculate(PLAN, "2026-01", recorded=day(7))
        world.sale("S-4", "P-2", day(8), 4_000)
        world.payout("PO-1", "P-1", day(60))
        world.terminate("P-2", when=day(61))
        world.sale("S-5", "P-2", day(62), 1_000)
        return world.events()


def test_every_named_key_is_read_and_the_unnamed_reads_are_the_expected_ones() -> None:
    events = _history()
    kinds = {(e.kind, e.name) for e in events}
    assert {("sale", "recorded"), ("sale", "refunded"), ("payout", "recorded"), ("registration", "approved"),
            ("plan", "recalculation_requested"), ("plan", "version_published")} <= kinds  # fmt: skip
    for recalculate_on_request in (True, False):
        ledger = CommissionLedger(recalculate_on_request=recalculate_on_request)
        store = InMemoryProjectionStore()
        requested: list[int] = []
        for event in events:
            unit = RecordingUnit(store, ledger.name)
            named = list(ledger.prefetch_keys(event)) if ledger.handles(event) else []
            unit.apply(ledger, event, "store")
            reads = set(unit.reads)
            missing = set(named) - reads
            assert not missing, (event.type, missing)
            extra = reads - set(named)
            if event.kind == "plan" and event.name == "recalculation_requested":
                requested.append(event.sequence)
                if recalculate_on_request:
                    continue  # every partner's months, sales and the plan, read by the recalculation
            if requested and any(r < event.sequence for r in requested) and event.kind != "plan":
                extra = {k for k in extra if k[0] not in ("partner_month", "sale", "plan")}
            if event.kind == "sale" and event.name == "recorded":
                extra = {k for k in extra if k[0] != "plan"}  # the plan depends on the partner's contracts
            if event.kind == "payout":
                # the lines it pays (known from the partner's unpaid index, not from the event)
                extra = {k for k in extra if k[0] != "line" or k[1].startswith("PAY-")}
            assert not extra, (event.type, extra)
            unit.commit()


def test_the_hint_keys_have_the_formats_apply_uses() -> None:
    events = _history()
    ledger = CommissionLedger()
    sale = next(e for e in events if e.type.endswith("sale.recorded") or (e.kind, e.name) == ("sale", "recorded"))
    keys = ledger.prefetch_keys(sale)
    assert ("partner", sale.partner_id) in keys
    assert ("recalculations", "index") in keys
    assert ("sale", "S-1") in keys
    assert ("partner_month", f"{sale.partner_id}/2026-01") in keys
    assert ("registration", f"{sale.partner_id}/R-1") in keys
    payout = next(e for e in events if (e.kind, e.name) == ("payout", "recorded"))
    assert ("line", "PAY-PO-1") in ledger.prefetch_keys(payout)
    refund = next(e for e in events if (e.kind, e.name) == ("sale", "refunded"))
    assert ("sale", "S-1") in ledger.prefetch_keys(refund)
    plan = next(e for e in events if e.kind == "plan")
    assert ledger.prefetch_keys(plan)[0] == ("plan", PLAN)
    assert prefetcher(ledger) is not None


def test_shared_mode_with_the_hint_gives_the_same_ledger_with_fewer_single_reads() -> None:
    events = _history()

    class NoHint(CommissionLedger):
        prefetch_keys = None  # type: ignore[assignment]

    results = {}
    for name, ledger in (("hint", CommissionLedger(recalculate_on_request=False)),
                         ("none", NoHint(recalculate_on_request=False))):  # fmt: skip
        store = CountingStore()
        run_projections(store, [ledger], events, batch_size=7)
        results[name] = (store.dump("ledger"), store.single_loads)
    assert results["hint"][0] == results["none"][0]
    assert results["hint"][1] < results["none"][1]


def test_a_partner_event_before_any_document_names_only_what_is_read() -> None:
    events = _history()
    first_partner_event = next(e for e in events if e.partner_id is not None)
    ledger = CommissionLedger()
    unit = RecordingUnit(InMemoryProjectionStore(), ledger.name)
    unit.apply(ledger, first_partner_event, "store")
    assert set(ledger.prefetch_keys(first_partner_event)) <= set(unit.reads)
