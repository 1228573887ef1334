"""Channel conflicts (channel.md): the projection over events recorded by the real domain.

Scenarios run ``PartnerProgram`` commands with explicit business times, read the
event store as envelopes and run ``ChannelConflicts`` over them. The order tests
replay the per-partition streams (one per partner, ``direct``, ``program``) in
arbitrary interleavings, as several Kafka workers would, and expect the very
same documents.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domain.application import PartnerProgram
from domain.conflicts import (
    DIRECT_VS_PARTNER,
    PARTNER_VS_PARTNER,
    SALE_OUTSIDE_REGISTRATION,
    conflict_id,
)
from domain.errors import ChannelConflictBlocks
from projections.conflict_queries import (
    ConflictCounts,
    conflict_counts,
    conflict_detail,
    find_conflict,
    list_conflicts,
    load_conflicts,
)
from projections.conflicts import CONFLICT, NAME, ChannelConflicts
from projections.envelope import EventEnvelope
from projections.memory import InMemoryProjectionStore
from projections.port import Doc
from projections.runner import run_projections
from projections.store_reader import read_store
from projections.unit_of_work import UnitOfWork

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
ADMIN = "ops@prm.example"

MINH_PHAT_VI = {"name": "Công ty TNHH Minh Phát", "country": "VN"}
MINH_PHAT_CAPS = {"name": "CONG TY TNHH MINH PHAT", "country": "VN"}
MINH_PHAT_EN = {"name": "Minh Phat Co., Ltd", "country": "VN"}
MINH_PHUONG = {"name": "Công ty TNHH Minh Phương", "country": "VN"}
THIEN_LONG = {"name": "Tập đoàn Thiên Long", "domain": "https://www.thienlong.vn/lien-he", "country": "VN"}
THIEN_LONG_SHORT = {"name": "TL Stationery", "domain": "thienlong.vn", "country": "VN"}
VINAMILK = {"name": "Công ty Cổ phần Sữa Việt Nam", "tax_id": "0101234567", "country": "VN"}
VINAMILK_BRANCH = {"name": "Vinamilk - Chi nhánh Hà Nội", "tax_id": "0101234567-001", "country": "VN"}
PHUC_AN = {"name": "Công ty TNHH Phúc An Logistics", "country": "VN"}
PHUC_AN_TYPO = {"name": "Phuc An Logistic", "country": "VN"}  # similarity 0.97


def day(n: float) -> datetime:
    return T0 + timedelta(days=n)


class Programme:
    """The real partner programme on the in-memory event store, driven with explicit times."""

    def __init__(self, *partners: str) -> None:
        self.app = PartnerProgram(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
        self.app.create_plan(plan_id="PLAN-STD", name="Standard", actor=ADMIN, at=day(-30))
        self.sales = 0
        for partner_id in partners:
            self.app.apply_partner(
                partner_id=partner_id, name=f"Partner {partner_id}", type="reseller", region="VN", size="small",
                actor=ADMIN, at=day(-20),
            )  # fmt: skip
            self.app.approve_partner(partner_id, actor=ADMIN, at=day(-20))
            self.app.sign_contract(
                contract_id=f"K-{partner_id}", partner_id=partner_id, starts_on=date(2026, 1, 1),
                ends_on=date(2026, 12, 31), auto_renew=False, territory=["VN"], terms="Reseller agreement v1",
                commission_plan_id="PLAN-STD", actor=ADMIN, at=day(-20),
            )  # fmt: skip
            self.app.record_training(
                partner_id, course="partner-onboarding", person="lan@partner.vn", actor=ADMIN, at=day(-20)
            )

    def submit(self, registration_id: str, partner_id: str, customer: dict[str, Any], when: datetime) -> list[str]:
        """Submit; returns the conflict ids the command side found."""
        result = self.app.submit_registration(
            registration_id=registration_id, partner_id=partner_id, customer=customer,
            estimated_value_minor=250_000_000, currency="VND", products=["software"],
            actor=f"sales@{partner_id.lower()}.vn", expected_close_on=date(2026, 6, 30), submitted_at=when,
        )  # fmt: skip
        return list(result.details["conflicts"])

    def approve(self, registration_id: str, when: datetime) -> None:
        self.app.approve_registration(registration_id, actor=ADMIN, at=when)

    def opportunity(self, opportunity_id: str, customer: dict[str, Any], when: datetime) -> None:
        self.app.open_opportunity(
            opportunity_id=opportunity_id, owner="an.nguyen@vendor.vn", customer=customer,
            estimated_value_minor=300_000_000, currency="VND", opened_at=when, source="crm",
        )  # fmt: skip

    def sale(self, sale_id: str, partner_id: str | None, customer: dict[str, Any], when: datetime) -> None:
        self.app.record_sale(
            sale_id=sale_id, partner_id=partner_id, customer=customer, occurred_at=when, source="erp/hanoi",
            lines=[{"sku": "CRM-PRO-12M", "category": "software", "quantity": 3, "unit_price_minor": 12_000_000,
                    "currency": "VND"}],
        )  # fmt: skip

    def resolve(
        self, cid: str, kind: str, registration_id: str, winner: str, when: datetime, other: str | None = None
    ) -> None:
        self.app.resolve_conflict(
            conflict_id=cid, kind=kind, registration_id=registration_id, other_registration_id=other,
            winner=winner, actor=ADMIN, reason="first to register", at=when,
        )  # fmt: skip

    def dismiss(self, cid: str, kind: str, registration_id: str, when: datetime) -> None:
        self.app.dismiss_conflict(
            conflict_id=cid, kind=kind, registration_id=registration_id, actor=ADMIN,
            reason="different subsidiaries", at=when,
        )  # fmt: skip

    def events(self) -> list[EventEnvelope]:
        return list(read_store(self.app))


def project(events: Iterable[EventEnvelope], store: InMemoryProjectionStore | None = None) -> InMemoryProjectionStore:
    store = store or InMemoryProjectionStore()
    run_projections(store, [ChannelConflicts()], events)
    return store


def conflicts_of(store: InMemoryProjectionStore) -> dict[str, Doc]:
    return {c["conflict_id"]: c for c in load_conflicts(store)}


def pairs(store: InMemoryProjectionStore) -> set[tuple[str, str, str]]:
    """(kind, earlier party, later party) of every conflict."""
    return {(c["kind"], c["earlier"]["id"], c["later"]["id"]) for c in load_conflicts(store)}


def command_side_ids(events: Iterable[EventEnvelope]) -> set[str]:
    return {
        c["conflict_id"] for e in events if e.type == "prm.registration.submitted.v1" for c in e.data["conflicts_with"]
    }


# ------------------------------------------------------------ partner vs partner


def test_vietnamese_name_variants_conflict_partner_vs_partner_with_the_command_side_ids() -> None:
    prm = Programme("P-1", "P-2", "P-3")
    assert prm.submit("R-1", "P-1", MINH_PHAT_VI, day(0)) == []
    found_2 = prm.submit("R-2", "P-2", MINH_PHAT_CAPS, day(1))
    prm.approve("R-1", day(2))
    found_3 = prm.submit("R-3", "P-3", MINH_PHAT_EN, day(3))
    store = project(prm.events())

    assert pairs(store) == {
        (PARTNER_VS_PARTNER, "R-1", "R-2"),  # R-1 pending when R-2 arrived
        (PARTNER_VS_PARTNER, "R-1", "R-3"),  # R-1 approved and protected
        (PARTNER_VS_PARTNER, "R-2", "R-3"),  # R-2 still pending
    }
    conflicts = conflicts_of(store)
    assert set(conflicts) == set(found_2) | set(found_3)
    one = conflicts[conflict_id(PARTNER_VS_PARTNER, "R-1", "R-3")]
    assert one["evidence"] == {
        "rule": "name",
        "left": "minh phat",
        "right": "minh phat",
        "score": 1.0,
        "threshold": 0.92,
    }
    assert one["earlier"] | {"customer": None} == {
        "type": "registration", "id": "R-1", "partner_id": "P-1", "sequence": one["earlier"]["sequence"],
        "at": "2026-01-05T09:00:00Z", "customer": None, "status": "approved",
        "protected_from": "2026-01-07T09:00:00Z", "protected_until": "2026-04-07T09:00:00Z",
    }  # fmt: skip
    assert one["later"]["id"] == "R-3" and one["later"]["customer"]["name"] == "Minh Phat Co., Ltd"
    assert one["registration_ids"] == ["R-1", "R-3"] and one["partner_ids"] == ["P-1", "P-3"]
    assert one["status"] == "open" and one["decision"] is None and one["reported_by_command_side"] is True
    submitted_r3 = next(e for e in prm.events() if e.type == "prm.registration.submitted.v1" and e.subject == "R-3")
    assert one["detected_at"] == submitted_r3.to_cloudevent()["time"] and one["sequence"] == submitted_r3.sequence
    # The command side recorded the very same evidence.
    assert {c["conflict_id"]: c["evidence"] for c in submitted_r3.data["conflicts_with"]}[one["conflict_id"]] == {
        k: one["evidence"][k] for k in ("rule", "left", "right", "score")
    }


@pytest.mark.parametrize(
    ("first", "second", "rule"),
    [
        (MINH_PHAT_VI, MINH_PHUONG, None),  # Minh Phát / Minh Phương: similar letters, another company
        ({"name": "Hoa Sen Trading", "domain": "gmail.com", "country": "VN"},
         {"name": "Lotus Imports", "domain": "https://www.GMAIL.com/", "country": "VN"}, None),
        ({"name": "Hoa Sen", "domain": "hoasen@yahoo.com.vn"}, {"name": "Sen Vang", "domain": "yahoo.com.vn"}, None),
        (THIEN_LONG, THIEN_LONG_SHORT, "domain"),
        (VINAMILK, VINAMILK_BRANCH, "tax_id"),  # a branch 0101234567-001 matches its parent
        ({**VINAMILK, "country": None}, {**VINAMILK_BRANCH, "country": None}, "tax_id"),
        ({**VINAMILK, "country": "SG"}, {**VINAMILK_BRANCH, "country": "SG"}, None),  # branch codes are Vietnamese
    ],
)  # fmt: skip
def test_account_matching_rules(first: dict[str, Any], second: dict[str, Any], rule: str | None) -> None:
    prm = Programme("P-1", "P-2")
    prm.submit("R-1", "P-1", first, day(0))
    found = prm.submit("R-2", "P-2", second, day(1))
    conflicts = conflicts_of(project(prm.events()))
    assert set(conflicts) == set(found)
    if rule is None:
        assert conflicts == {}
        return
    (conflict,) = conflicts.values()
    assert conflict["evidence"]["rule"] == rule
    if rule == "tax_id":
        assert (conflict["evidence"]["left"], conflict["evidence"]["right"]) == ("0101234567", "0101234567001")
    if rule == "domain":
        assert conflict["evidence"]["left"] == conflict["evidence"]["right"] == "thienlong.vn"


def test_a_partner_never_conflicts_with_itself() -> None:
    prm = Programme("P-1")
    prm.submit("R-1", "P-1", MINH_PHAT_VI, day(0))
    prm.submit("R-2", "P-1", MINH_PHAT_EN, day(1))
    prm.approve("R-1", day(2))
    prm.sale("S-1", "P-1", MINH_PHAT_CAPS, day(3))
    assert pairs(project(prm.events())) == set()


@pytest.mark.parametrize("closing", ["withdrawn", "rejected", "expired", "protection_over"])
def test_no_conflict_once_the_earlier_registration_is_closed_before_the_later_one(closing: str) -> None:
    prm = Programme("P-1", "P-2")
    prm.submit("R-1", "P-1", MINH_PHAT_VI, day(0))
    if closing == "withdrawn":
        prm.app.withdraw_registration("R-1", actor="sales@p-1.vn", reason="customer chose later", at=day(1))
    elif closing == "rejected":
        prm.app.reject_registration("R-1", actor=ADMIN, reason_code="insufficient_information", at=day(1))
    else:
        prm.approve("R-1", day(1))
        if closing == "expired":
            assert len(prm.app.expire_registrations(at=day(95))) == 1
    # "protection_over": approved, protection ended at day 91 but nobody ran the expiry yet.
    found = prm.submit("R-2", "P-2", MINH_PHAT_CAPS, day(96))
    events = prm.events()
    assert found == [] and pairs(project(events)) == set()

    # A worker that sees R-2 before R-1's later events first finds a conflict (R-1 looks pending), then drops it.
    submitted = next(e.sequence for e in events if e.subject == "R-1")
    head = [e for e in events if partition(e) == "P-1" and e.sequence <= submitted]
    store = InMemoryProjectionStore()
    run_partitioned(store, deliveries(head + streams(events)["P-2"]), batch_size=1)
    assert pairs(store) == {(PARTNER_VS_PARTNER, "R-1", "R-2")}
    run_partitioned(store, deliveries([e for e in events if partition(e) == "P-1" and e not in head]), batch_size=1)
    assert store.dump(NAME) == project(events).dump(NAME)


# ----------------------------------------------------------- direct vs partner


def test_direct_opportunity_and_direct_sale_on_a_protected_account() -> None:
    prm = Programme("P-1")
    prm.submit("R-1", "P-1", MINH_PHAT_VI, day(0))
    prm.opportunity("O-0", MINH_PHAT_EN, day(1))  # pending registration: not protected yet
    prm.approve("R-1", day(2))
    prm.opportunity("O-1", MINH_PHAT_EN, day(3))
    prm.sale("S-1", None, MINH_PHAT_CAPS, day(4))
    prm.sale("S-2", None, MINH_PHAT_CAPS, day(1))  # recorded late, but it happened before the protection
    prm.opportunity("O-2", MINH_PHUONG, day(5))  # another company
    prm.opportunity("O-3", MINH_PHAT_EN, day(92))  # protection ended at day 92
    prm.opportunity("O-4", MINH_PHAT_EN, day(91.9))
    store = project(prm.events())
    assert pairs(store) == {
        (DIRECT_VS_PARTNER, "R-1", "O-1"),
        (DIRECT_VS_PARTNER, "R-1", "S-1"),
        (DIRECT_VS_PARTNER, "R-1", "O-4"),
    }
    conflicts = conflicts_of(store)
    opportunity = conflicts[conflict_id(DIRECT_VS_PARTNER, "R-1", "O-1")]
    assert opportunity["opportunity_id"] == "O-1" and opportunity["sale_id"] is None
    assert opportunity["later"]["owner"] == "an.nguyen@vendor.vn" and opportunity["partner_ids"] == ["P-1"]
    assert conflicts[conflict_id(DIRECT_VS_PARTNER, "R-1", "S-1")]["sale_id"] == "S-1"


def test_direct_party_seen_before_the_approval_is_still_compared_when_the_approval_arrives() -> None:
    prm = Programme("P-1")
    prm.submit("R-1", "P-1", MINH_PHAT_VI, day(0))
    prm.approve("R-1", day(1))
    prm.opportunity("O-1", MINH_PHAT_EN, day(3))
    events = prm.events()
    store = InMemoryProjectionStore()
    run_partitioned(store, deliveries(partitions_in_turn(events, "direct", "P-1")), batch_size=1)
    assert store.dump(NAME) == project(events).dump(NAME)
    assert pairs(store) == {(DIRECT_VS_PARTNER, "R-1", "O-1")}


# --------------------------------------------------- sale outside registration


def test_sale_by_another_partner_on_a_protected_account() -> None:
    prm = Programme("P-1", "P-2")
    prm.submit("R-1", "P-1", VINAMILK, day(0))
    prm.sale("S-0", "P-2", VINAMILK_BRANCH, day(1))  # before the approval
    prm.approve("R-1", day(2))
    prm.sale("S-1", "P-2", VINAMILK_BRANCH, day(10))
    prm.sale("S-2", "P-1", VINAMILK, day(11))  # the protected partner's own sale
    prm.sale("S-3", "P-2", VINAMILK_BRANCH, day(93))  # after the protection
    store = project(prm.events())
    assert pairs(store) == {(SALE_OUTSIDE_REGISTRATION, "R-1", "S-1")}
    (conflict,) = load_conflicts(store)
    assert conflict["conflict_id"] == conflict_id(SALE_OUTSIDE_REGISTRATION, "R-1", "S-1")
    assert conflict["partner_ids"] == ["P-1", "P-2"] and conflict["sale_id"] == "S-1"
    assert conflict["evidence"]["rule"] == "tax_id"
    # R-1 was won by S-2; a won registration keeps protecting its account until the protection ends.
    prm.sale("S-4", "P-2", VINAMILK, day(20))
    assert (SALE_OUTSIDE_REGISTRATION, "R-1", "S-4") in pairs(project(prm.events()))


# ------------------------------------------------------ resolution, dismissal


def test_resolution_and_dismissal_come_from_the_commands() -> None:
    prm = Programme("P-1", "P-2")
    prm.submit("R-1", "P-1", MINH_PHAT_VI, day(0))
    (pvp,) = prm.submit("R-2", "P-2", MINH_PHAT_EN, day(1))
    prm.resolve(pvp, PARTNER_VS_PARTNER, "R-2", "R-1", day(2), other="R-1")
    prm.approve("R-1", day(2))
    prm.opportunity("O-1", MINH_PHAT_CAPS, day(3))
    dvp = conflict_id(DIRECT_VS_PARTNER, "R-1", "O-1")
    prm.dismiss(dvp, DIRECT_VS_PARTNER, "R-1", day(4))
    events = prm.events()
    conflicts = conflicts_of(project(events))

    resolved = conflicts[pvp]
    assert resolved["status"] == "resolved"
    assert {k: resolved["decision"][k] for k in ("status", "winner", "by", "reason", "at")} == {
        "status": "resolved", "winner": "R-1", "by": ADMIN, "reason": "first to register", "at": "2026-01-07T09:00:00Z",
    }  # fmt: skip
    assert [d["registration_id"] for d in resolved["decisions"]] == ["R-2", "R-1"]  # both registrations record it
    assert resolved["closed_at"] == resolved["decisions"][0]["recorded_at"]
    dismissed = conflicts[dvp]
    assert dismissed["status"] == "dismissed" and dismissed["decision"]["reason"] == "different subsidiaries"
    assert dismissed["decision"]["winner"] is None

    # A decision processed before the conflict could be detected waits for it.
    # R-2's stream (with its decision) before R-1's; R-1's (with the dismissal) before the opportunity.
    store = InMemoryProjectionStore()
    run_partitioned(store, deliveries(partitions_in_turn(events, "P-2", "P-1", "direct")), batch_size=3)
    assert conflicts_of(store) == conflicts


def test_a_lost_conflict_ends_the_protection_from_the_decision_on() -> None:
    prm = Programme("P-1", "P-2")
    prm.submit("R-1", "P-1", VINAMILK, day(0))
    prm.approve("R-1", day(1))
    prm.sale("S-1", None, VINAMILK_BRANCH, day(5))
    dvp = conflict_id(DIRECT_VS_PARTNER, "R-1", "S-1")
    prm.resolve(dvp, DIRECT_VS_PARTNER, "R-1", "direct", day(6))
    prm.sale("S-2", None, VINAMILK, day(7))  # after the decision: R-1 no longer protects
    prm.sale("S-3", "P-2", VINAMILK, day(5.5))  # recorded after the decision, occurred while still protected
    store = project(prm.events())
    assert pairs(store) == {(DIRECT_VS_PARTNER, "R-1", "S-1"), (SALE_OUTSIDE_REGISTRATION, "R-1", "S-3")}
    assert conflicts_of(store)[dvp]["decision"]["winner"] == "direct"
    assert conflicts_of(store)[conflict_id(SALE_OUTSIDE_REGISTRATION, "R-1", "S-3")]["earlier"]["protected_until"] == (
        "2026-01-11T09:00:00Z"
    )


def test_the_same_pair_is_one_conflict_even_when_the_command_side_names_it_both_ways() -> None:
    prm = Programme("P-1", "P-2")
    prm.submit("R-1", "P-1", MINH_PHAT_VI, day(0))
    (first,) = prm.submit("R-2", "P-2", MINH_PHAT_EN, day(1))
    prm.resolve(first, PARTNER_VS_PARTNER, "R-2", "R-2", day(2), other="R-1")
    prm.approve("R-2", day(2))
    with pytest.raises(ChannelConflictBlocks) as blocked:
        prm.approve("R-1", day(3))  # now R-2 (approved, protected) blocks R-1, under the reversed id
    reversed_id = conflict_id(PARTNER_VS_PARTNER, "R-2", "R-1")
    assert blocked.value.details["conflicts"] == [reversed_id]
    prm.resolve(reversed_id, PARTNER_VS_PARTNER, "R-1", "R-2", day(3), other="R-2")
    store = project(prm.events())
    (conflict,) = load_conflicts(store)
    assert conflict["conflict_id"] == first and conflict["aliases"] == [reversed_id]
    assert conflict["status"] == "resolved" and len(conflict["decisions"]) == 4
    assert find_conflict(load_conflicts(store), reversed_id) == conflict
    detail = conflict_detail(store, reversed_id)
    assert detail is not None and detail["conflict"] == conflict


# ------------------------------------------------------------- settings


def test_the_name_threshold_in_force_at_the_later_event_decides() -> None:
    prm = Programme("P-1", "P-2", "P-3")
    prm.submit("R-1", "P-1", PHUC_AN, day(0))
    assert len(prm.submit("R-2", "P-2", PHUC_AN_TYPO, day(1))) == 1
    prm.app.withdraw_registration("R-2", actor="sales@p-2.vn", at=day(2))
    prm.app.change_settings({"name_similarity_threshold_bp": 9800}, actor=ADMIN, reason="fewer false hits", at=day(2))
    assert prm.submit("R-3", "P-3", PHUC_AN_TYPO, day(3)) == []
    events = prm.events()
    store = project(events)
    assert pairs(store) == {(PARTNER_VS_PARTNER, "R-1", "R-2")}
    assert conflicts_of(store).keys() == command_side_ids(events)
    # The settings change processed last (another topic): first looks like a conflict, then is withdrawn.
    late = InMemoryProjectionStore()
    run_partitioned(late, deliveries(partitions_in_turn(events, "P-1", "P-2", "P-3", "program")), batch_size=1)
    assert late.dump(NAME) == store.dump(NAME)


# ---------------------------------------------------------------- idempotency


def test_re_delivered_and_re_applied_events_change_nothing() -> None:
    events = scenario()
    store = project(events)
    before = store.dump(NAME)
    stats = run_projections(store, [ChannelConflicts()], events + events[len(events) // 2 :], batch_size=7)
    assert stats.applied == 0 and store.dump(NAME) == before
    # Even past the checkpoints (a replay under another source), applying again is a no-op.
    unit = UnitOfWork(store, NAME)
    for event in events[len(events) // 3 :]:
        assert unit.apply(ChannelConflicts(), event, "replay")
    unit.commit()
    assert store.dump(NAME) == before


# -------------------------------------------------------------------- queries


def test_queries_filter_detail_and_count_by_period() -> None:
    prm = Programme("P-1", "P-2", "P-3")
    prm.submit("R-1", "P-1", MINH_PHAT_VI, day(0))
    (pvp,) = prm.submit("R-2", "P-2", MINH_PHAT_EN, day(1))
    prm.submit("R-3", "P-3", VINAMILK, day(1))
    prm.approve("R-3", day(2))
    prm.sale("S-1", None, VINAMILK_BRANCH, day(3))
    prm.sale("S-2", "P-1", VINAMILK, day(3))
    dvp, sor = conflict_id(DIRECT_VS_PARTNER, "R-3", "S-1"), conflict_id(SALE_OUTSIDE_REGISTRATION, "R-3", "S-2")
    prm.resolve(pvp, PARTNER_VS_PARTNER, "R-2", "R-1", day(4), other="R-1")
    prm.dismiss(dvp, DIRECT_VS_PARTNER, "R-3", day(5))
    prm.app.withdraw_registration("R-3", actor="sales@p-3.vn", at=day(6))
    # Recording times one hour apart by position, so periods are easy to cut.
    events = [dataclasses.replace(e, time=T0 + timedelta(hours=e.sequence)) for e in prm.events()]
    sequence = {(e.subject, e.name): e.sequence for e in events}
    store = project(events)
    conflicts = load_conflicts(store)

    assert [c["conflict_id"] for c in conflicts] == [pvp, dvp, sor]  # detection order
    assert [c["conflict_id"] for c in list_conflicts(conflicts, status="open")] == [sor]
    assert [c["conflict_id"] for c in list_conflicts(conflicts, partner_id="P-1")] == [pvp, sor]
    assert [c["conflict_id"] for c in list_conflicts(conflicts, kind=DIRECT_VS_PARTNER, status="dismissed")] == [dvp]
    assert list_conflicts(conflicts, kind=PARTNER_VS_PARTNER, partner_id="P-3") == []
    with pytest.raises(ValueError, match="unknown conflict status"):
        list_conflicts(conflicts, status="closed")

    detail = conflict_detail(store, sor)
    assert detail is not None and detail["evidence"]["rule"] == "tax_id"
    assert [(p["id"], p.get("status_now")) for p in detail["parties"]] == [("R-3", "withdrawn"), ("S-2", None)]
    assert detail["moot"] is True  # still open, but R-3 was withdrawn since
    assert conflict_detail(store, "C-0000000000000000") is None

    def at_position(name: tuple[str, str]) -> datetime:
        return T0 + timedelta(hours=sequence[name])

    everything = conflict_counts(conflicts, T0, T0 + timedelta(days=30))
    assert everything == {
        PARTNER_VS_PARTNER: ConflictCounts(opened=1, resolved=1, dismissed=0, open_at_end=0),
        DIRECT_VS_PARTNER: ConflictCounts(opened=1, resolved=0, dismissed=1, open_at_end=0),
        SALE_OUTSIDE_REGISTRATION: ConflictCounts(opened=1, resolved=0, dismissed=0, open_at_end=1),
    }
    # A period ending just before the resolution: all three opened, all three still open.
    until_resolution = conflict_counts(conflicts, T0, at_position(("R-2", "conflict_resolved")))
    assert {k: (c.opened, c.resolved, c.open_at_end) for k, c in until_resolution.items()} == {
        PARTNER_VS_PARTNER: (1, 0, 1), DIRECT_VS_PARTNER: (1, 0, 1), SALE_OUTSIDE_REGISTRATION: (1, 0, 1),
    }  # fmt: skip
    # The next period: the resolution and the dismissal, nothing opened.
    later = conflict_counts(conflicts, at_position(("R-2", "conflict_resolved")), T0 + timedelta(days=30))
    assert later[PARTNER_VS_PARTNER] == ConflictCounts(opened=0, resolved=1, dismissed=0, open_at_end=0)
    assert later[DIRECT_VS_PARTNER] == ConflictCounts(opened=0, resolved=0, dismissed=1, open_at_end=0)
    assert conflict_counts(conflicts, T0, T0 + timedelta(days=30), partner_id="P-2")[DIRECT_VS_PARTNER] == (
        ConflictCounts()
    )


# ------------------------------------------------------------------- order


def partition(event: EventEnvelope) -> str:
    """The Kafka partition key: the partner, ``direct`` for direct sales and opportunities, ``program`` for settings."""
    if event.kind in ("program", "plan"):
        return "program"
    return event.partner_id or "direct"


def streams(events: Iterable[EventEnvelope]) -> dict[str, list[EventEnvelope]]:
    """The events of each partition, in order."""
    result: dict[str, list[EventEnvelope]] = {}
    for event in events:
        result.setdefault(partition(event), []).append(event)
    return result


def partitions_in_turn(events: Iterable[EventEnvelope], *keys: str) -> list[EventEnvelope]:
    """Each named partition's whole stream in turn (then any other partition): a legal, very skewed order."""
    by_key = streams(events)
    return [e for key in [*keys, *(k for k in by_key if k not in keys)] for e in by_key.get(key, [])]


def deliveries(events: Iterable[EventEnvelope]) -> list[tuple[str, EventEnvelope]]:
    return [(partition(e), e) for e in events]


def run_partitioned(
    store: InMemoryProjectionStore, deliveries: Sequence[tuple[str, EventEnvelope]], batch_size: int
) -> None:
    """Deliver events as Kafka workers would: one checkpoint source per partition, a commit per chunk."""
    chunks: list[tuple[str, list[EventEnvelope]]] = []
    for key, event in deliveries:
        if chunks and chunks[-1][0] == key and len(chunks[-1][1]) < batch_size:
            chunks[-1][1].append(event)
        else:
            chunks.append((key, [event]))
    for key, chunk in chunks:
        run_projections(store, [ChannelConflicts()], chunk, source=f"kafka:prm.events.v1:{key}")


@functools.cache
def scenario() -> list[EventEnvelope]:
    """Four partners, the direct team and a settings change: every kind, decisions, closings, a lost protection."""
    prm = Programme("P-1", "P-2", "P-3", "P-4")
    prm.submit("R-1", "P-1", MINH_PHAT_VI, day(0))
    prm.submit("R-10", "P-3", PHUC_AN, day(0))
    (pvp_12,) = prm.submit("R-2", "P-2", MINH_PHAT_CAPS, day(1))
    prm.submit("R-12", "P-2", PHUC_AN_TYPO, day(1))
    prm.approve("R-1", day(2))
    prm.opportunity("O-1", MINH_PHAT_EN, day(3))
    prm.submit("R-3", "P-3", MINH_PHAT_EN, day(3))
    prm.submit("R-4", "P-4", THIEN_LONG, day(4))
    prm.submit("R-6", "P-1", VINAMILK, day(4))
    prm.opportunity("O-2", VINAMILK_BRANCH, day(4))  # R-6 not approved yet
    prm.app.withdraw_registration("R-4", actor="sales@p-4.vn", at=day(5))
    prm.approve("R-6", day(5))
    prm.submit("R-5", "P-2", THIEN_LONG_SHORT, day(6))  # R-4 withdrawn before
    prm.resolve(pvp_12, PARTNER_VS_PARTNER, "R-2", "R-1", day(6), other="R-1")
    prm.dismiss(conflict_id(PARTNER_VS_PARTNER, "R-1", "R-3"), PARTNER_VS_PARTNER, "R-3", day(7))
    prm.app.reject_registration("R-2", actor=ADMIN, reason_code="duplicate", at=day(8))
    prm.submit("R-8", "P-1", {"name": "Hoa Sen Trading", "domain": "gmail.com", "country": "VN"}, day(8))
    prm.submit("R-9", "P-2", {"name": "Lotus Imports", "domain": "gmail.com", "country": "VN"}, day(8))
    prm.sale("S-1", "P-3", VINAMILK_BRANCH, day(10))
    prm.sale("S-2", "P-1", VINAMILK, day(10))
    prm.sale("S-3", None, VINAMILK_BRANCH, day(11))
    prm.resolve(conflict_id(DIRECT_VS_PARTNER, "R-6", "S-3"), DIRECT_VS_PARTNER, "R-6", "direct", day(12))
    prm.sale("S-4", None, VINAMILK, day(13))
    prm.sale("S-5", "P-4", VINAMILK, day(11))
    prm.app.withdraw_registration("R-12", actor="sales@p-2.vn", at=day(13))
    prm.app.change_settings({"name_similarity_threshold_bp": 9800}, actor=ADMIN, reason="fewer false hits", at=day(14))
    prm.submit("R-11", "P-4", PHUC_AN_TYPO, day(15))
    prm.app.withdraw_registration("R-10", actor="sales@p-3.vn", at=day(16))
    prm.app.extend_protection("R-1", actor=ADMIN, reason="long tender", at=day(80))
    prm.opportunity("O-4", MINH_PHAT_CAPS, day(100))  # inside the 30 extra days
    prm.app.expire_registrations(at=day(200))
    prm.submit("R-13", "P-2", MINH_PHAT_VI, day(201))
    prm.opportunity("O-3", MINH_PHAT_EN, day(202))
    handles = ChannelConflicts().handles
    return [e for e in prm.events() if handles(e)]


@functools.cache
def scenario_documents() -> dict[tuple[str, str], Doc]:
    return project(scenario()).dump(NAME)


def test_scenario_conflicts_in_store_order() -> None:
    events = scenario()
    store = project(events)
    assert pairs(store) == {
        (PARTNER_VS_PARTNER, "R-1", "R-2"),
        (PARTNER_VS_PARTNER, "R-10", "R-12"),  # 0.97 similar, before the threshold went to 0.98
        (DIRECT_VS_PARTNER, "R-1", "O-1"),
        (PARTNER_VS_PARTNER, "R-1", "R-3"),
        (PARTNER_VS_PARTNER, "R-2", "R-3"),
        (SALE_OUTSIDE_REGISTRATION, "R-6", "S-1"),
        (DIRECT_VS_PARTNER, "R-6", "S-3"),
        (SALE_OUTSIDE_REGISTRATION, "R-6", "S-5"),  # occurred before R-6 lost its protection on day 12
        (DIRECT_VS_PARTNER, "R-1", "O-4"),  # within R-1's extended protection
        (PARTNER_VS_PARTNER, "R-3", "R-13"),  # R-3 still pending; R-1 expired
    }
    conflicts = conflicts_of(store)
    pvp = {cid for cid, c in conflicts.items() if c["kind"] == PARTNER_VS_PARTNER}
    assert pvp == command_side_ids(events)
    assert {c["status"] for c in conflicts.values() if c["decisions"]} == {"resolved", "dismissed"}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), batch_size=st.integers(min_value=1, max_value=6))
def test_any_interleaving_of_the_partitions_gives_the_same_documents(data: st.DataObject, batch_size: int) -> None:
    events = scenario()
    by_key = streams(events)
    order = data.draw(st.permutations([key for key, stream in by_key.items() for _ in stream]), label="order")
    cursor = dict.fromkeys(by_key, 0)
    interleaved = []
    for key in order:
        interleaved.append((key, by_key[key][cursor[key]]))
        cursor[key] += 1
    store = InMemoryProjectionStore()
    run_partitioned(store, interleaved, batch_size)

    expected = scenario_documents()
    assert store.dump(NAME) == expected  # every document, conflicts included
    ids = {key for kind, key in expected if kind == CONFLICT}
    pvp = {cid for cid in ids if expected[(CONFLICT, cid)]["kind"] == PARTNER_VS_PARTNER}
    assert pvp == command_side_ids(events)
