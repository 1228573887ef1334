"""The commission ledger, driven by the real domain (``PartnerProgram`` on the in-memory store).

Every scenario records its events through the application's commands with
explicit business times, and with an explicit *recording* time (the events'
``time``: what lines are booked by), then projects the store's log with
``run_projections``. The arithmetic of each expected figure is in the comments.

Plan used unless said otherwise (``TERMS``), version 1 effective 2026-01-01:
tier rates registered 500 / silver 800 / gold 1000 / platinum 1200 bps, bonus
200 bps, category ``hardware``: registered 300 / gold 600 bps, USD accelerators
+200 bps above 10 000 and +300 more above 20 000 (so +500 above 20 000),
hold 30 days.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, date, datetime, timedelta
from typing import Any
from unittest import mock

import eventsourcing.domain
import pytest

from domain.application import PartnerProgram
from projections.envelope import EventEnvelope
from projections.ledger import CommissionLedger
from projections.ledger_queries import balances, discrepancies, explain, lines_of, payable_minor, statement
from projections.memory import InMemoryProjectionStore
from projections.port import Doc, DocKey
from projections.runner import run_projections
from projections.store_reader import read_store

ADMIN = "admin@prm.example"
PLAN = "PL-STD"
T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
JAN1 = datetime(2026, 1, 1, tzinfo=UTC)
TERMS: dict[str, Any] = {
    "category_rates_bps": {"hardware": {"registered": 300, "gold": 600}},
    "accelerators": {
        "USD": [{"above_minor": 10_000, "extra_bps": 200}, {"above_minor": 20_000, "extra_bps": 300}],
    },
    "hold_days": 30,
}


def day(n: float, hours: float = 0) -> datetime:
    """``T0`` + ``n`` days (2026-01-05 09:00Z is day 0)."""
    return T0 + timedelta(days=n, hours=hours)


def utc(year: int, month: int, dom: int, hour: int = 0) -> datetime:
    return datetime(year, month, dom, hour, tzinfo=UTC)


class LedgerWorld:
    """Scenarios on a real ``PartnerProgram``, with a controllable recording clock.

    ``eventsourcing`` stamps each event with ``datetime_now_with_tzinfo()``; the
    world patches it so that an event is recorded at the instant the scenario
    says (by default the command's own business time).
    """

    def __init__(self) -> None:
        self.now = utc(2025, 12, 1)
        self._stack = ExitStack()
        self._stack.enter_context(mock.patch.object(eventsourcing.domain, "datetime_now_with_tzinfo", lambda: self.now))
        self.app = PartnerProgram(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
        self._registration_actor = "sales@partner.example"

    def close(self) -> None:
        self.app.close()
        self._stack.close()

    def __enter__(self) -> LedgerWorld:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _rec(self, when: datetime) -> None:
        self.now = when

    # ---- programme --------------------------------------------------------------
    def plan(
        self, plan_id: str = PLAN, terms: dict[str, Any] | None = None, *, recorded: datetime | None = None
    ) -> str:
        self._rec(recorded or utc(2025, 12, 1))
        self.app.create_plan(plan_id=plan_id, name=f"Plan {plan_id}", actor=ADMIN, at=self.now)
        self.version(plan_id, JAN1, TERMS if terms is None else terms, recorded=self.now)
        return plan_id

    def version(self, plan_id: str, effective_from: datetime, terms: dict[str, Any], *, recorded: datetime) -> None:
        self._rec(recorded)
        self.app.publish_plan_version(
            plan_id, effective_from=effective_from, terms=terms, actor=ADMIN, reason="pricing", at=recorded
        )

    def recalculate(self, plan_id: str, period: str, *, recorded: datetime) -> None:
        self._rec(recorded)
        self.app.request_recalculation(plan_id, period=period, actor=ADMIN, reason="price fix", at=recorded)

    # ---- partners ------------------------------------------------------------------
    def partner(
        self,
        partner_id: str = "P-1",
        *,
        when: datetime = utc(2025, 12, 15),
        contract: bool = True,
        plan_id: str = PLAN,
        starts_on: date = date(2026, 1, 1),
        ends_on: date = date(2026, 12, 31),
    ) -> str:
        self._rec(when)
        app = self.app
        app.apply_partner(
            partner_id=partner_id, name=f"Partner {partner_id}", type="reseller", region="VN", size="small",
            actor=ADMIN, at=when,
        )  # fmt: skip
        app.approve_partner(partner_id, actor=ADMIN, at=when)
        if contract:
            app.sign_contract(
                contract_id=f"C-{partner_id}", partner_id=partner_id, starts_on=starts_on, ends_on=ends_on,
                auto_renew=False, territory=["VN"], terms="std", commission_plan_id=plan_id, actor=ADMIN, at=when,
            )  # fmt: skip
            app.record_training(partner_id, course="partner-onboarding", person="lan", actor=ADMIN, at=when)
        return partner_id

    def tier(self, partner_id: str, tier: str, *, effective: datetime, recorded: datetime) -> None:
        self._rec(recorded)
        self.app.override_tier(partner_id, tier=tier, actor=ADMIN, reason="deal", effective_at=effective)

    def terminate(self, partner_id: str, *, when: datetime) -> None:
        self._rec(when)
        self.app.terminate_partner(partner_id, actor=ADMIN, reason="breach", at=when)

    def registration(self, registration_id: str, partner_id: str, *, when: datetime, approve: bool = True) -> None:
        self._rec(when)
        self.app.submit_registration(
            registration_id=registration_id, partner_id=partner_id,
            customer={"name": f"Customer {registration_id}", "country": "VN"}, estimated_value_minor=10_000,
            currency="USD", products=["crm"], actor=self._registration_actor, submitted_at=when,
        )  # fmt: skip
        if approve:
            self.app.approve_registration(registration_id, actor=ADMIN, at=when)

    # ---- money ---------------------------------------------------------------------
    def sale(
        self,
        sale_id: str,
        partner_id: str | None,
        occurred: datetime,
        *lines: int | tuple[int, int] | tuple[int, int, str],
        currency: str = "USD",
        registration: str | None = None,
        recorded: datetime | None = None,
    ) -> None:
        """Lines: ``amount`` (1 x amount, software), ``(quantity, unit price)`` or ``(q, price, category)``."""
        self._rec(recorded or occurred + timedelta(minutes=1))
        built = []
        for spec in lines or (1_000,):
            if isinstance(spec, int):
                quantity, price, category = 1, spec, "software"
            elif len(spec) == 2:
                quantity, price, category = spec[0], spec[1], "software"
            else:
                quantity, price, category = spec
            built.append(
                {"sku": f"SKU-{category}", "category": category, "quantity": quantity,
                 "unit_price_minor": price, "currency": currency}
            )  # fmt: skip
        self.app.record_sale(
            sale_id=sale_id, partner_id=partner_id, customer={"name": "Công ty Minh Phát", "country": "VN"},
            lines=built, occurred_at=occurred, source="erp/hanoi", registration_id=registration,
        )  # fmt: skip

    def refund(
        self, sale_id: str, refund_id: str, amount: int, occurred: datetime, *, recorded: datetime | None = None
    ) -> None:
        self._rec(recorded or occurred + timedelta(minutes=1))
        self.app.refund_sale(
            sale_id=sale_id, refund_id=refund_id, amount_minor=amount, currency="USD", occurred_at=occurred,
            source="erp/hanoi",
        )  # fmt: skip

    def payout(
        self, payout_id: str, partner_id: str, at: datetime, *, amount: int | None = None, currency: str = "USD"
    ) -> int:
        """Pay the payable balance read from the ledger (or ``amount``, claimed to be it)."""
        payable = payable_minor(self.ledger(), partner_id, currency, at) if amount is None else amount
        self._rec(at)
        self.app.record_payout(
            payout_id=payout_id, partner_id=partner_id, currency=currency, period=f"{at.year}-{at.month:02d}",
            amount_minor=payable, payable_minor=payable, actor=ADMIN, at=at,
        )  # fmt: skip
        return payable

    # ---- the projection ------------------------------------------------------------
    def events(self) -> list[EventEnvelope]:
        return list(read_store(self.app))

    def ledger(self, *, batch_size: int = 500, **options: Any) -> dict[DocKey, Doc]:
        store = InMemoryProjectionStore()
        run_projections(store, [CommissionLedger(**options)], self.events(), batch_size=batch_size)
        return store.dump("ledger")


def line(docs: dict[DocKey, Doc], line_id: str) -> Doc:
    return docs[("line", line_id)]


def amount(docs: dict[DocKey, Doc], line_id: str) -> int:
    found: int = docs[("line", line_id)]["amount_minor"]
    return found


@pytest.fixture
def world() -> Iterator[LedgerWorld]:
    with LedgerWorld() as w:
        w.plan()
        w.partner("P-1")
        yield w


# ============================================================================
# Rates
# ============================================================================


class TestRateSources:
    def test_tier_rate(self, world: LedgerWorld) -> None:
        world.sale("S-1", "P-1", day(5), 1_000)
        docs = world.ledger()
        accrual = line(docs, "L-S-1-1")
        # registered, software (no category entry): 1000 * 500 / 10000 = 50
        assert accrual["amount_minor"] == 50
        ex = accrual["explanation"]
        assert (ex["tier"], ex["base_bps"], ex["bonus_bps"]) == ("registered", 500, 0)
        assert ex["base_rate_source"] == "tier_rates_bps[registered]"
        assert ex["plan"]["plan_id"] == PLAN and ex["plan"]["version"] == 1
        assert ex["contract"] == {
            "contract_id": "C-P-1",
            "in_force": True,
            "plan_source": "contract_in_force",
            "plan_id": PLAN,
        }
        assert [p["amount_minor"] for p in ex["parts"]] == [1_000]
        assert accrual["kind"] == "accrual" and accrual["currency"] == "USD"
        assert accrual["payable_at"] == "2026-02-09T09:00:00Z"  # occurred 2026-01-10 09:00 + 30 days

    def test_category_rate_replaces_the_tier_rate(self, world: LedgerWorld) -> None:
        world.sale("S-1", "P-1", day(5), (1, 1_000, "hardware"))
        world.tier("P-1", "silver", effective=day(6), recorded=day(6))
        world.sale("S-2", "P-1", day(7), (1, 1_000, "hardware"))
        docs = world.ledger()
        # registered hardware: category rate 300 replaces 500 -> 1000 * 300 / 10000 = 30
        assert amount(docs, "L-S-1-1") == 30
        assert line(docs, "L-S-1-1")["explanation"]["base_rate_source"] == "category_rates_bps[hardware][registered]"
        # silver hardware: no category entry for silver -> tier rate 800; Q = 1000 (< 10000):
        # 1000 * 800 / 10000 = 80
        assert amount(docs, "L-S-2-1") == 80
        assert line(docs, "L-S-2-1")["explanation"]["base_rate_source"] == "tier_rates_bps[silver]"

    def test_registration_bonus_is_added_within_protection(self, world: LedgerWorld) -> None:
        world.registration("R-1", "P-1", when=day(0))  # approved day 0, protected 90 days (until day 90)
        world.sale("S-1", "P-1", day(10), 1_000, registration="R-1")  # marks R-1 won
        world.sale("S-2", "P-1", day(20), 1_000, registration="R-1")  # won, still protected: bonus too
        world.sale("S-3", "P-1", day(95), 1_000, registration="R-1")  # protection ended at day 90
        docs = world.ledger()
        # (500 + 200) bps: 1000 * 700 / 10000 = 70
        assert amount(docs, "L-S-1-1") == 70
        ex = line(docs, "L-S-1-1")["explanation"]
        assert ex["bonus_bps"] == 200 and ex["registration"]["eligible"] is True
        assert ex["registration"]["registration_id"] == "R-1"
        # Q = 1000 before S-2, still below the first threshold: 70 again
        assert amount(docs, "L-S-2-1") == 70
        # day 95 is in Q2 (2026-04-10): Q = 0, no bonus: 1000 * 500 / 10000 = 50
        assert amount(docs, "L-S-3-1") == 50
        assert line(docs, "L-S-3-1")["explanation"]["registration"]["why"].startswith("protection had ended")
        assert discrepancies(docs) == []  # the ledger agrees with the command side's bonus flag

    def test_extension_counts_and_losing_a_conflict_ends_protection(self, world: LedgerWorld) -> None:
        world.registration("R-1", "P-1", when=day(0))
        world._rec(day(80))
        world.app.extend_protection("R-1", actor=ADMIN, reason="long deal", at=day(80))  # until day 120
        world.sale("S-1", "P-1", day(100), 1_000, registration="R-1")
        world.registration("R-2", "P-1", when=day(1))
        world._rec(day(30))
        world.app.resolve_conflict(
            conflict_id="X-1", kind="direct_vs_partner", registration_id="R-2", winner="direct", actor=ADMIN,
            reason="our own team had the deal", at=day(30),
        )  # fmt: skip
        world.sale("S-2", "P-1", day(40), 1_000, registration="R-2")
        docs = world.ledger()
        # day 100 < day 120 (extended): bonus, Q2 starts at 0: 1000 * 700 / 10000 = 70
        assert amount(docs, "L-S-1-1") == 70
        # R-2 lost protection at day 30: the sale on day 40 gets no bonus: 1000 * 500 / 10000 = 50
        assert amount(docs, "L-S-2-1") == 50
        assert line(docs, "L-S-2-1")["explanation"]["registration"]["protected_until"] == "2026-02-04T09:00:00Z"

    def test_withdrawn_registration_and_another_partners_registration_earn_no_bonus(self, world: LedgerWorld) -> None:
        world.partner("P-2")
        world.registration("R-1", "P-1", when=day(0))
        world._rec(day(3))
        world.app.withdraw_registration("R-1", actor=ADMIN, at=day(3))
        world.registration("R-2", "P-2", when=day(0))
        world.sale("S-1", "P-1", day(5), 1_000, registration="R-1")
        world.sale("S-2", "P-1", day(6), 1_000, registration="R-2")  # P-2's registration
        docs = world.ledger()
        assert amount(docs, "L-S-1-1") == 50  # 1000 * 500 / 10000
        assert line(docs, "L-S-1-1")["explanation"]["registration"]["why"].startswith("withdrawn before the sale")
        assert amount(docs, "L-S-2-1") == 50
        ex = line(docs, "L-S-2-1")["explanation"]
        assert ex["registration"]["eligible"] is False
        assert "registration_of_another_partner" in ex["flags"]


class TestTierInForce:
    def test_an_override_effective_later_does_not_apply(self, world: LedgerWorld) -> None:
        world.tier("P-1", "gold", effective=day(30), recorded=day(1))
        world.sale("S-1", "P-1", day(10), 1_000)
        world.sale("S-2", "P-1", day(40), 1_000)
        docs = world.ledger()
        assert amount(docs, "L-S-1-1") == 50  # registered at day 10: 1000 * 500 / 10000
        assert amount(docs, "L-S-2-1") == 100  # gold from day 30: 1000 * 1000 / 10000
        assert line(docs, "L-S-2-1")["explanation"]["tier_change"]["effective_at"] == "2026-02-04T09:00:00Z"

    def test_a_tier_change_recorded_after_the_sale_does_not_rewrite_it(self, world: LedgerWorld) -> None:
        world.sale("S-1", "P-1", day(10), 1_000)
        world.tier("P-1", "gold", effective=day(5), recorded=day(12))  # retroactive override
        world.sale("S-2", "P-1", day(11), 1_000, recorded=day(13))
        docs = world.ledger()
        assert amount(docs, "L-S-1-1") == 50  # recorded before the override: registered
        assert amount(docs, "L-S-2-1") == 100  # recorded after it, occurred after day 5: gold


# ============================================================================
# Accelerators and Q
# ============================================================================


class TestAccelerators:
    def test_crossing_one_then_two_thresholds(self, world: LedgerWorld) -> None:
        world.sale("S-A", "P-1", utc(2026, 1, 10), 8_000)
        world.sale("S-B", "P-1", utc(2026, 2, 10), 5_000)
        world.sale("S-C", "P-1", utc(2026, 3, 10), 4_000, 9_000)
        docs = world.ledger()
        # S-A: Q = 0, (0, 8000] at 500: 8000 * 500 / 10000 = 400
        assert amount(docs, "L-S-A-1") == 400
        # S-B: Q = 8000: (8000, 10000] 2000 at 500 = 100; (10000, 13000] 3000 at 700 = 210 -> 310
        assert amount(docs, "L-S-B-1") == 310
        parts = line(docs, "L-S-B-1")["explanation"]["parts"]
        assert [(p["start_minor"], p["end_minor"], p["rate_bps"]) for p in parts] == [
            (8_000, 10_000, 500),
            (10_000, 13_000, 700),
        ]
        # S-C line 1: Q = 13000: 4000 at 700 = 280
        assert amount(docs, "L-S-C-1") == 280
        assert line(docs, "L-S-C-1")["explanation"]["q_before"] == 13_000
        # S-C line 2: Q = 17000 (earlier line of the same sale counts):
        # (17000, 20000] 3000 at 700 = 210; (20000, 26000] 6000 at 1000 = 600 -> 810
        assert amount(docs, "L-S-C-2") == 810
        assert line(docs, "L-S-C-2")["explanation"]["q_before"] == 17_000

    def test_one_line_crossing_two_thresholds_and_a_new_quarter(self, world: LedgerWorld) -> None:
        world.sale("S-A", "P-1", utc(2026, 1, 10), 8_000)
        world.sale("S-B", "P-1", utc(2026, 2, 10), 15_000)
        world.sale("S-D", "P-1", utc(2026, 4, 2), 1_000)
        docs = world.ledger()
        # Q = 8000, A = 15000: (8000,10000] 2000*500 = 100; (10000,20000] 10000*700 = 700;
        # (20000,23000] 3000*1000 = 300 -> 1100
        assert amount(docs, "L-S-B-1") == 1_100
        assert line(docs, "L-S-B-1")["explanation"]["formula"] == (
            "round_half_even((2000*500 + 10000*700 + 3000*1000) / 10000) = round_half_even(1100/1) = 1100"
        )
        # Q2 starts again at 0: 1000 * 500 / 10000 = 50
        assert amount(docs, "L-S-D-1") == 50

    def test_a_refund_lowers_q_for_later_sales_of_its_quarter_only(self, world: LedgerWorld) -> None:
        world.sale("S-A", "P-1", utc(2026, 1, 10), 12_000)
        world.refund("S-A", "RF-1", 5_000, utc(2026, 2, 1))
        world.sale("S-B", "P-1", utc(2026, 3, 1), 4_000)
        docs = world.ledger()
        # S-A: (0,10000] 10000*500 = 500; (10000,12000] 2000*700 = 140 -> 640; never re-rated
        assert amount(docs, "L-S-A-1") == 640
        # clawback: -(rhe(5000*640/12000) - rhe(0)) = -rhe(266.67) = -267
        assert amount(docs, "CB-S-A-RF-1-1") == -267
        # S-B: Q = 12000 - 5000 = 7000: (7000,10000] 3000*500 = 150; (10000,11000] 1000*700 = 70 -> 220
        assert amount(docs, "L-S-B-1") == 220

    def test_a_refund_in_the_next_quarter_lowers_that_quarter(self, world: LedgerWorld) -> None:
        world.sale("S-A", "P-1", utc(2026, 1, 10), 12_000)
        world.refund("S-A", "RF-1", 5_000, utc(2026, 4, 2))
        world.sale("S-B", "P-1", utc(2026, 3, 20), 4_000, recorded=utc(2026, 4, 3))  # late, Q1
        world.sale("S-C", "P-1", utc(2026, 4, 5), 4_000)
        docs = world.ledger()
        # S-B in Q1: Q = 12000 (the refund occurred in Q2): 4000 * 700 / 10000 = 280
        assert amount(docs, "L-S-B-1") == 280
        # S-C in Q2: Q = -5000, the line spans (-5000, -1000], base rate: 4000 * 500 / 10000 = 200
        assert amount(docs, "L-S-C-1") == 200
        assert line(docs, "L-S-C-1")["explanation"]["q_before"] == -5_000


# ============================================================================
# Rounding, refunds, clawbacks
# ============================================================================


class TestRoundingAndRefunds:
    def test_rounding_ties_go_to_the_even_unit(self, world: LedgerWorld) -> None:
        world.sale("S-1", "P-1", day(5), 1_010, 1_030, 1_050)
        docs = world.ledger()
        assert amount(docs, "L-S-1-1") == 50  # 1010 * 500 / 10000 = 50.5 -> 50 (even)
        assert amount(docs, "L-S-1-2") == 52  # 1030 * 500 / 10000 = 51.5 -> 52 (even)
        assert amount(docs, "L-S-1-3") == 52  # 1050 * 500 / 10000 = 52.5 -> 52 (even)
        assert line(docs, "L-S-1-1")["explanation"]["exact_commission"] == "101/2"

    def test_partial_then_full_refund_nets_to_exactly_zero(self, world: LedgerWorld) -> None:
        world.sale("S-1", "P-1", day(5), 1_010, 1_030, 3_000)  # S = 5040, C = [50, 52, 150]
        # 3000 at Q = 2040: 3000 * 500 / 10000 = 150
        world.refund("S-1", "RF-1", 1_260, day(6))  # a quarter of the sale
        world.refund("S-1", "RF-2", 3_780, day(7))  # the rest
        docs = world.ledger()
        assert [amount(docs, f"L-S-1-{n}") for n in (1, 2, 3)] == [50, 52, 150]
        # RF-1, R 0 -> 1260: -rhe(1260*50/5040 = 12.5) = -12; -rhe(1260*52/5040 = 13) = -13;
        #                    -rhe(1260*150/5040 = 37.5) = -38
        assert [amount(docs, f"CB-S-1-RF-1-{n}") for n in (1, 2, 3)] == [-12, -13, -38]
        # RF-2, R 1260 -> 5040: -(50 - 12) = -38; -(52 - 13) = -39; -(150 - 38) = -112
        assert [amount(docs, f"CB-S-1-RF-2-{n}") for n in (1, 2, 3)] == [-38, -39, -112]
        for n in (1, 2, 3):
            assert amount(docs, f"L-S-1-{n}") + amount(docs, f"CB-S-1-RF-1-{n}") + amount(docs, f"CB-S-1-RF-2-{n}") == 0
        clawback = line(docs, "CB-S-1-RF-1-1")
        assert clawback["links"] == ["L-S-1-1"]
        assert clawback["explanation"]["formula"] == "-(rhe(1260*50/5040) - rhe(0*50/5040)) = -(12 - 0) = -12"
        assert balances(docs, "P-1", "USD", as_of=day(8))["balance"] == 0

    def test_a_refund_after_payout_is_a_negative_line_carried_forward(self, world: LedgerWorld) -> None:
        world.sale("S-A", "P-1", utc(2026, 1, 6), 2_000)  # 2000 * 500 / 10000 = 100, payable Feb 5
        paid = world.payout("PO-1", "P-1", utc(2026, 2, 10))
        assert paid == 100
        world.refund("S-A", "RF-1", 2_000, utc(2026, 2, 15))  # full: -100, payable at once
        docs = world.ledger()
        assert amount(docs, "CB-S-A-RF-1-1") == -100
        assert line(docs, "L-S-A-1")["paid_by"] == "PO-1"  # nothing already paid is edited
        after_refund = balances(docs, "P-1", "USD", as_of=utc(2026, 2, 16))
        assert after_refund == {
            "partner_id": "P-1",
            "currency": "USD",
            "as_of": "2026-02-16T00:00:00Z",
            "accrued": 0,
            "payable": -100,
            "paid": 100,
            "payouts": 100,
            "balance": -100,
        }
        # Q1 net is now 2000 - 2000 = 0: S-B 6000 * 500 / 10000 = 300, payable Mar 22
        world.sale("S-B", "P-1", utc(2026, 2, 20), 6_000)
        assert world.payout("PO-2", "P-1", utc(2026, 3, 25)) == 200  # 300 - 100 carried forward
        docs = world.ledger()
        assert line(docs, "CB-S-A-RF-1-1")["paid_by"] == "PO-2"
        assert line(docs, "L-S-B-1")["paid_by"] == "PO-2"
        assert line(docs, "PAY-PO-2")["explanation"]["paid_lines"] == ["CB-S-A-RF-1-1", "L-S-B-1"]
        assert balances(docs, "P-1", "USD", as_of=utc(2026, 3, 26))["balance"] == 0
        assert discrepancies(docs) == []


# ============================================================================
# Plan versions and recalculation
# ============================================================================

V2 = {**TERMS, "tier_rates_bps": {"registered": 600, "silver": 800, "gold": 1000, "platinum": 1200}}


class TestPlanVersions:
    def test_a_version_recorded_after_the_sale_does_not_change_the_line(self, world: LedgerWorld) -> None:
        world.sale("S-1", "P-1", day(5), 1_000)
        world.version(PLAN, utc(2026, 1, 2), V2, recorded=day(6))  # effective before the sale, recorded after
        world.sale("S-2", "P-1", day(5), 1_000, recorded=day(7))
        docs = world.ledger()
        assert amount(docs, "L-S-1-1") == 50  # v1: 1000 * 500 / 10000
        assert line(docs, "L-S-1-1")["explanation"]["plan"]["version"] == 1
        assert amount(docs, "L-S-2-1") == 60  # v2 was recorded before S-2: 1000 * 600 / 10000
        assert line(docs, "L-S-2-1")["explanation"]["plan"]["version"] == 2

    def test_a_recalculation_books_explained_adjustments(self, world: LedgerWorld) -> None:
        world.sale("S-1", "P-1", day(5), 1_000, 1_010)
        world.refund("S-1", "RF-1", 1_005, day(6))  # half the sale (S = 2010)
        world.version(PLAN, utc(2026, 1, 2), V2, recorded=day(7))
        world.sale("S-2", "P-1", day(5), 1_000, recorded=day(8))  # already rated with v2
        world.recalculate(PLAN, "2026-01", recorded=day(9))
        world.refund("S-1", "RF-2", 1_005, day(10))  # the other half
        docs = world.ledger()
        # S-1 under v1: 1000*500/10000 = 50; 1010*500/10000 = 50.5 -> 50
        # RF-1 (R 0 -> 1005 of 2010): -rhe(1005*50/2010 = 25) = -25 on each line; net 25 and 25
        assert [amount(docs, f"CB-S-1-RF-1-{n}") for n in (1, 2)] == [-25, -25]
        # under v2 (600): 1000*600/10000 = 60; 1010*600/10000 = 60.6 -> 61
        # net under v2: 60 - rhe(1005*60/2010 = 30) = 30; 61 - rhe(1005*61/2010 = 30.5) = 61 - 30 = 31
        # adjustments: 30 - 25 = +5; 31 - 25 = +6
        adjustment = line(docs, f"ADJ-{_recalc_sequence(world)}-S-1-1")
        assert adjustment["amount_minor"] == 5
        assert amount(docs, f"ADJ-{_recalc_sequence(world)}-S-1-2") == 6
        assert adjustment["kind"] == "adjustment" and adjustment["links"] == ["L-S-1-1"]
        ex = adjustment["explanation"]
        assert ex["plan"]["version"] == 2 and ex["previous"] == {"gross_minor": 50, "net_minor": 25, "plan_version": 1}
        assert ex["formula"] == "(60 - rhe(1005*60/2010)) - (50 - rhe(1005*50/2010)) = 30 - 25 = 5"
        assert adjustment["booked_at"] == "2026-01-14T09:00:00Z"  # when the recalculation was recorded
        assert ("line", f"ADJ-{_recalc_sequence(world)}-S-2-1") not in docs  # S-2 already earned 60
        # RF-2 (R 1005 -> 2010) claws back the recalculated commission: -(60 - 30) = -30; -(61 - 31) = -31
        assert [amount(docs, f"CB-S-1-RF-2-{n}") for n in (1, 2)] == [-30, -31]
        for n in (1, 2):
            sale_line = [ln for ln in lines_of(docs, "P-1", "USD", as_of=day(11)) if ln.get("sale_line") == n]
            assert sum(ln["amount_minor"] for ln in sale_line if ln["sale_id"] == "S-1") == 0
        text = explain(docs, adjustment["line_id"])["text"]
        assert "recalculation of plan PL-STD for 2026-01" in text and "= 30 - 25 = 5" in text

    def test_the_recalculation_applied_on_the_partners_next_event_gives_the_same_ledger(
        self, world: LedgerWorld
    ) -> None:
        world.sale("S-1", "P-1", day(5), 1_000)
        world.version(PLAN, utc(2026, 1, 2), V2, recorded=day(7))
        world.recalculate(PLAN, "2026-Q1", recorded=day(9))
        world.sale("S-2", "P-1", day(10), 1_000)  # the partner's next event
        eager = world.ledger()
        deferred = world.ledger(recalculate_on_request=False)
        assert eager == deferred
        assert amount(eager, f"ADJ-{_recalc_sequence(world)}-S-1-1") == 10  # 60 - 50

    def test_the_fanned_out_request_reaches_a_partner_with_no_later_sale(self, world: LedgerWorld) -> None:
        world.sale("S-1", "P-1", day(5), 1_000)
        world.version(PLAN, utc(2026, 1, 2), V2, recorded=day(7))
        world.recalculate(PLAN, "2026-Q1", recorded=day(9))
        # The application records the request on every partner with a contract on the plan, in the
        # partner's own stream: a Kafka worker (deferred mode) adjusts P-1 without a later sale.
        assert "prm.partner.commission_recalculation_requested.v1" in [e.type for e in world.events()]
        deferred = world.ledger(recalculate_on_request=False)
        assert deferred == world.ledger()
        assert amount(deferred, f"ADJ-{_recalc_sequence(world)}-S-1-1") == 10  # 60 - 50


def _recalc_sequence(world: LedgerWorld) -> int:
    return next(e.sequence for e in world.events() if e.type == "prm.plan.recalculation_requested.v1")


# ============================================================================
# Partners without commission
# ============================================================================


class TestNoCommission:
    def test_terminated_partner_earns_nothing_but_the_sale_counts_in_q(self, world: LedgerWorld) -> None:
        world.terminate("P-1", when=utc(2026, 2, 1))
        world.sale("S-1", "P-1", utc(2026, 2, 10), 12_000)
        world.sale("S-2", "P-1", utc(2026, 1, 20), 1_000, recorded=utc(2026, 2, 11))  # late, before termination
        docs = world.ledger()
        accrual = line(docs, "L-S-1-1")
        assert accrual["amount_minor"] == 0
        assert accrual["explanation"]["reason"] == "partner_terminated"
        assert "partner_terminated" in accrual["explanation"]["flags"]  # the command side's flag
        # S-2 occurred before the termination: earns, with Q = 12000 (the terminated sale is revenue):
        # 1000 * 700 / 10000 = 70
        assert amount(docs, "L-S-2-1") == 70

    def test_a_direct_sale_earns_nothing(self, world: LedgerWorld) -> None:
        world.sale("S-D", None, day(5), 50_000)
        world.refund("S-D", "RF-1", 1_000, day(6))
        docs = world.ledger()
        assert [key for key in docs if key[0] in ("line", "sale", "discrepancy")] == []

    def test_no_contract_at_all_and_no_contract_in_force(self) -> None:
        with LedgerWorld() as w:
            w.plan()
            w.partner("P-1", contract=False)
            w.partner("P-2", ends_on=date(2026, 1, 31))
            w.sale("S-1", "P-1", day(5), 1_000)
            w.sale("S-2", "P-2", utc(2026, 2, 10), 1_000)
            docs = w.ledger()
        first = line(docs, "L-S-1-1")
        assert first["amount_minor"] == 0 and first["explanation"]["reason"] == "no_commission_plan"
        second = line(docs, "L-S-2-1")
        # the most recent contract's plan, flagged: 1000 * 500 / 10000 = 50
        assert second["amount_minor"] == 50
        assert second["explanation"]["contract"]["plan_source"] == "most_recent_contract"
        assert "no_contract_in_force" in second["explanation"]["flags"]

    def test_no_plan_version_effective_yet(self) -> None:
        with LedgerWorld() as w:
            w.plan()
            w.partner("P-1", starts_on=date(2025, 12, 1))
            w.sale("S-1", "P-1", utc(2025, 12, 20), 1_000)  # v1 is effective from 2026-01-01
            docs = w.ledger()
        assert line(docs, "L-S-1-1")["explanation"]["reason"] == "no_plan_version"
        assert amount(docs, "L-S-1-1") == 0


# ============================================================================
# Statements, status and payouts
# ============================================================================


class TestStatementsAndPayouts:
    def test_statements_are_by_booking_month(self, world: LedgerWorld) -> None:
        world.sale("S-1", "P-1", utc(2026, 1, 10), 2_000)  # 100, booked January
        world.sale("S-2", "P-1", utc(2026, 2, 20), 1_000, recorded=utc(2026, 4, 2))  # late: booked April
        world.refund("S-1", "RF-1", 1_000, utc(2026, 3, 3))  # -rhe(1000*100/2000) = -50, booked March
        docs = world.ledger()
        january = statement(docs, "P-1", "USD", "2026-01", as_of=utc(2026, 5, 1))
        assert (january["opening_balance"], january["accruals"], january["closing_balance"]) == (0, 100, 100)
        assert [ln["line_id"] for ln in january["lines"]] == ["L-S-1-1"]
        assert january["lines"][0]["status"] == "accrued"  # at the end of January: payable only from Feb 9
        february = statement(docs, "P-1", "USD", "2026-02", as_of=utc(2026, 5, 1))
        assert february["lines"] == [] and february["closing_balance"] == 100
        march = statement(docs, "P-1", "USD", "2026-03", as_of=utc(2026, 5, 1))
        assert (march["opening_balance"], march["clawbacks"], march["closing_balance"]) == (100, -50, 50)
        april = statement(docs, "P-1", "USD", "2026-04", as_of=utc(2026, 5, 1))
        # S-2: Q1 net before it = 2000 - 1000 = 1000 -> 1000 * 500 / 10000 = 50
        assert (april["opening_balance"], april["accruals"], april["closing_balance"]) == (50, 50, 100)
        assert april["lines"][0]["occurred_at"] == "2026-02-20T00:00:00Z"
        assert "L-S-2-1: accrual +50 USD" in april["lines"][0]["text"]
        # reproducible: the January statement asked later is the same
        later = statement(docs, "P-1", "USD", "2026-01", as_of=utc(2027, 1, 1))
        assert {**later, "as_of": None} == {**january, "as_of": None}
        # and as of mid-February, the late sale was not known yet
        assert statement(docs, "P-1", "USD", "2026-04", as_of=utc(2026, 4, 1))["lines"] == []

    def test_a_payout_pays_exactly_the_payable_balance(self, world: LedgerWorld) -> None:
        world.sale("S-1", "P-1", utc(2026, 1, 6), 2_000)  # 100, payable Feb 5
        world.sale("S-2", "P-1", utc(2026, 1, 25), 2_000)  # Q 2000: 100, payable Feb 24
        docs = world.ledger()
        before = balances(docs, "P-1", "USD", as_of=utc(2026, 2, 10))
        assert (before["accrued"], before["payable"], before["balance"]) == (100, 100, 200)
        assert world.payout("PO-1", "P-1", utc(2026, 2, 10)) == 100
        docs = world.ledger()
        after = balances(docs, "P-1", "USD", as_of=utc(2026, 2, 11))
        assert (after["accrued"], after["payable"], after["paid"], after["payouts"], after["balance"]) == (
            100,
            0,
            100,
            100,
            100,
        )
        assert [ln["status"] for ln in lines_of(docs, "P-1", "USD", as_of=utc(2026, 2, 11))] == [
            "paid",
            "accrued",
            "paid",
        ]
        # as of before the payout was recorded, the system showed S-1 payable, not paid
        assert balances(docs, "P-1", "USD", as_of=utc(2026, 2, 9)) == {**before, "as_of": "2026-02-09T00:00:00Z"}
        assert discrepancies(docs) == []
        assert "pays 1 line(s)" in explain(docs, "PAY-PO-1")["text"]

    def test_a_payout_different_from_the_payable_balance_is_a_discrepancy(self, world: LedgerWorld) -> None:
        world.sale("S-1", "P-1", utc(2026, 1, 6), 2_000)  # 100 payable from Feb 5
        world.payout("PO-1", "P-1", utc(2026, 2, 10), amount=120)  # the caller claims 120 is payable
        docs = world.ledger()
        [found] = discrepancies(docs, "P-1")
        assert (found["what"], found["expected"], found["recorded"]) == ("payout", 100, 120)
        assert balances(docs, "P-1", "USD", as_of=utc(2026, 2, 11))["balance"] == -20

    def test_explain_gives_the_arithmetic(self, world: LedgerWorld) -> None:
        world.registration("R-1", "P-1", when=day(0))
        world.sale("S-1", "P-1", utc(2026, 1, 10), 8_000, 5_000, registration="R-1")
        docs = world.ledger()
        explained = explain(docs, "L-S-1-2")
        # Q = 8000: (8000,10000] 2000 at 500+200 = 140; (10000,13000] 3000 at 500+200+200 = 270 -> 410
        assert explained["amount_minor"] == 410
        text = explained["text"]
        assert "registration R-1: approved_at <= occurred_at < protected_until" in text
        assert "part (8000, 10000]: 2000 x (500 + 200 + 0) bps = 140/1" in text
        assert "part (10000, 13000]: 3000 x (500 + 200 + 200) bps = 270/1" in text
        assert "commission = round_half_even((2000*700 + 3000*900) / 10000) = round_half_even(410/1) = 410" in text
        assert explained["source_event_ids"] and explained["sale"] == {"sale_id": "S-1", "total_minor": 13_000}
        with pytest.raises(KeyError):
            explain(docs, "L-nope")


class TestReplay:
    def test_redelivery_and_batches_change_nothing(self, world: LedgerWorld) -> None:
        world.sale("S-1", "P-1", day(5), 12_000)
        world.refund("S-1", "RF-1", 2_000, day(6))
        world.version(PLAN, utc(2026, 1, 2), V2, recorded=day(7))
        world.recalculate(PLAN, "2026-01", recorded=day(8))
        world.payout("PO-1", "P-1", day(60))
        events = world.events()
        store = InMemoryProjectionStore()
        run_projections(store, [CommissionLedger()], events, batch_size=3)
        once = store.dump("ledger")
        stats = run_projections(store, [CommissionLedger()], events + events[5:], batch_size=4)
        assert stats.applied == 0 and store.dump("ledger") == once
        # the same events from another source (checkpoint not shared): the reducer itself dedupes
        run_projections(store, [CommissionLedger()], events, source="kafka:prm.events.v1:0", batch_size=7)
        assert store.dump("ledger") == once
        assert world.ledger(batch_size=1) == once


def test_plan_terms_are_parsed_once_per_content_and_a_new_version_is_parsed_on_first_use() -> None:
    from domain.commission import PlanTerms
    from projections.ledger import _plan_terms

    base = {"tier_rates_bps": {"registered": 500, "silver": 800, "gold": 1000, "platinum": 1200}, "hold_days": 30}
    first = _plan_terms(base)
    assert first == PlanTerms.from_dict(base)
    # the same content (another dict, keys in another order) shares the parsed value
    assert _plan_terms(dict(reversed(list(base.items())))) is first
    # a new version with other terms is parsed on its own, never confused with the first
    uplift = {**base, "tier_rates_bps": {**base["tier_rates_bps"], "gold": 1100}}
    second = _plan_terms(uplift)
    assert second is not None and second != first and second.tier_rates_bps["gold"] == 1100
    # JSON distinguishes what validation distinguishes: 30.0 is not an integer number of days
    assert _plan_terms({**base, "hold_days": 30.0}) is None
    # invalid terms give None every time; terms JSON cannot carry are parsed without the cache
    assert _plan_terms({"tier_rates_bps": {"registered": -1}}) is None
    assert _plan_terms({"tier_rates_bps": {1: 500}}) is None
