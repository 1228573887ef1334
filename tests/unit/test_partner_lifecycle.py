"""Partner lifecycle (channel.md, Partners): every transition and every refusal.

applied -> approved (+ onboarding_started) | rejected; onboarding -> active once a
contract is signed *and* the onboarding training is completed (either order);
active <-> suspended; onboarding/active/suspended -> terminated (final).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from domain.application import PartnerProgram
from domain.errors import (
    AlreadyExists,
    CapacityExceeded,
    InvalidTransition,
    NotFound,
    PartnerCannotRegister,
    ReasonRequired,
    UnknownPartner,
    ValidationFailed,
)
from domain.partner import Partner
from domain.program import ProgramSettings
from tests.unit.conftest import (
    ADMIN,
    ONBOARDING,
    T0,
    World,
    active_partner,
    applied_partner,
    at,
    event_names,
    onboarding_partner,
    state_of,
)

# ------------------------------------------------------------------ applying


def test_apply_to_join_records_applied_with_the_segments() -> None:
    partner = applied_partner("P-0042", T0, subregion="HN", contact_email="ops@acme.vn")

    events = partner.collect_events()
    assert event_names(events) == ["Applied"]
    assert events[0].partner_id == "P-0042"
    assert partner.status == "applied"
    assert (partner.type, partner.region, partner.subregion, partner.size) == ("reseller", "VN", "HN", "small")
    assert partner.tier == "registered"
    assert partner.tier_at(T0) == "registered"
    assert partner.applied_at == T0
    assert partner.id == Partner.id_for("P-0042")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"type": "wholesaler"}, "unknown partner type 'wholesaler'"),
        ({"size": "huge"}, "unknown size 'huge'"),
        ({"region": "vn"}, "ISO 3166-1 alpha-2"),
        ({"region": "VNM"}, "ISO 3166-1 alpha-2"),
        ({"name": "  "}, "name is required"),
        ({"actor": ""}, "actor is required"),
    ],
)
def test_apply_to_join_refuses_invalid_data(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationFailed, match=message):
        applied_partner("P-1", T0, **changes)


def test_apply_to_join_refuses_an_empty_partner_id() -> None:
    with pytest.raises(ValidationFailed, match="partner_id is required"):
        applied_partner(" ", T0)


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="naive datetime"):
        applied_partner("P-1", datetime(2026, 1, 5, 9, 0))
    partner = applied_partner()
    partner.collect_events()
    with pytest.raises(ValueError, match="naive datetime"):
        partner.approve(ADMIN, datetime(2026, 1, 6))
    assert partner.collect_events() == []
    assert partner.status == "applied"


def test_times_in_other_zones_are_stored_in_utc() -> None:
    hanoi = datetime(2026, 1, 5, 16, 0, tzinfo=UTC).astimezone(timezone(timedelta(hours=7), "ICT"))
    partner = applied_partner("P-1", hanoi)
    assert partner.applied_at == T0 + timedelta(hours=7)
    assert partner.applied_at.utcoffset() == timedelta(0)


# ------------------------------------------------------------------ approval / rejection


def test_approve_records_approved_then_onboarding_started() -> None:
    partner = applied_partner()
    partner.collect_events()

    partner.approve(" reviewer@prm ", at(1), reason="good references")

    events = partner.collect_events()
    assert event_names(events) == ["Approved", "OnboardingStarted"]
    assert events[0].actor == "reviewer@prm"
    assert events[0].reason == "good references"
    assert events[1].actor == "reviewer@prm"
    assert partner.status == "onboarding"
    assert partner.approved_at == at(1)


def test_approve_needs_no_reason_but_an_actor() -> None:
    partner = applied_partner()
    partner.collect_events()
    with pytest.raises(ValidationFailed, match="actor is required"):
        partner.approve("  ", at(1))
    assert partner.collect_events() == []
    assert partner.status == "applied"


def test_reject_records_the_reason() -> None:
    partner = applied_partner()
    partner.collect_events()

    partner.reject(ADMIN, "  no references  ", at(1))

    events = partner.collect_events()
    assert event_names(events) == ["Rejected"]
    assert events[0].reason == "no references"
    assert partner.status == "rejected"


@pytest.mark.parametrize("reason", [None, "", "   "])
def test_reject_requires_a_reason(reason: str | None) -> None:
    partner = applied_partner()
    partner.collect_events()
    with pytest.raises(ReasonRequired, match="a reason is required to reject a partner"):
        partner.reject(ADMIN, reason, at(1))  # type: ignore[arg-type]
    assert partner.collect_events() == []
    assert partner.status == "applied"


def test_reject_requires_an_actor() -> None:
    partner = applied_partner()
    partner.collect_events()
    with pytest.raises(ValidationFailed, match="actor is required"):
        partner.reject("", "no references", at(1))
    assert partner.collect_events() == []


def test_an_approved_partner_cannot_be_rejected_or_approved_again() -> None:
    partner = onboarding_partner()
    partner.collect_events()
    with pytest.raises(InvalidTransition, match="cannot reject partner P-1: it is onboarding"):
        partner.reject(ADMIN, "changed our mind", at(1))
    with pytest.raises(InvalidTransition, match="cannot approve partner P-1: it is onboarding"):
        partner.approve(ADMIN, at(1))
    assert partner.collect_events() == []


def _every_command(partner: Partner) -> list[tuple[str, Any]]:
    when = at(10)
    return [
        ("approve", lambda: partner.approve(ADMIN, when)),
        ("reject", lambda: partner.reject(ADMIN, "reason", when)),
        ("suspend", lambda: partner.suspend(ADMIN, "reason", when)),
        ("reinstate", lambda: partner.reinstate(ADMIN, when, "reason")),
        ("terminate", lambda: partner.terminate(ADMIN, "reason", when)),
        ("change_segment", lambda: partner.change_segment(ADMIN, when, size="large")),
        ("override_tier", lambda: partner.override_tier("gold", ADMIN, "reason", when)),
        ("record_training", lambda: partner.record_training(ONBOARDING, "x@y", when, ADMIN)),
        ("grant_certification", lambda: partner.grant_certification("cert", "x@y", when, None, ADMIN)),
        ("attach_contract", lambda: partner.attach_contract("C-99", when)),
        (
            "evaluate_tier",
            lambda: partner.evaluate_tier(
                quarter_end=datetime(2026, 4, 1, tzinfo=UTC),
                revenue_minor=0,
                settings=ProgramSettings(),
                actor=ADMIN,
                at=when,
            ),
        ),
    ]


@pytest.mark.parametrize("final", ["rejected", "terminated"])
def test_rejected_and_terminated_are_final(final: str) -> None:
    if final == "rejected":
        partner = applied_partner()
        partner.reject(ADMIN, "no references", at(1))
    else:
        partner = active_partner()
        partner.terminate(ADMIN, "breach of contract", at(1))
    partner.collect_events()
    before = state_of(partner)

    for name, command in _every_command(partner):
        with pytest.raises(InvalidTransition, match=f"it is {final}"):
            command()
        assert partner.collect_events() == [], name
    assert state_of(partner) == before
    assert partner.status == final
    assert not partner.can_register_deals


def test_an_applied_partner_can_only_be_approved_rejected_or_resegmented() -> None:
    partner = applied_partner()
    partner.collect_events()
    refused = {"suspend", "reinstate", "terminate", "override_tier", "record_training", "grant_certification"}
    refused |= {"attach_contract", "evaluate_tier"}
    for name, command in _every_command(partner):
        if name in refused:
            with pytest.raises(InvalidTransition, match="it is applied"):
                command()
            assert partner.collect_events() == [], name
    assert partner.status == "applied"


# ------------------------------------------------------------------ onboarding -> active


def test_contract_then_training_activates() -> None:
    partner = onboarding_partner()
    partner.collect_events()

    partner.attach_contract("C-1", at(1))
    assert not partner.complete_onboarding_if_ready(ADMIN, at(1), ONBOARDING)
    assert partner.status == "onboarding"

    partner.record_training(ONBOARDING, "lan@acme.vn", at(2), ADMIN)
    assert partner.complete_onboarding_if_ready(ADMIN, at(2), ONBOARDING)

    events = partner.collect_events()
    assert event_names(events) == ["ContractAttached", "TrainingCompleted", "Activated"]
    assert events[-1].contract_id == "C-1"
    assert partner.status == "active"
    assert partner.activated_at == at(2)
    assert partner.can_register_deals


def test_training_then_contract_activates() -> None:
    partner = onboarding_partner()
    partner.collect_events()

    partner.record_training(ONBOARDING, "lan@acme.vn", at(1), ADMIN)
    assert not partner.complete_onboarding_if_ready(ADMIN, at(1), ONBOARDING)
    partner.attach_contract("C-1", at(3))
    assert partner.complete_onboarding_if_ready(ADMIN, at(3), ONBOARDING)

    assert event_names(partner.collect_events()) == ["TrainingCompleted", "ContractAttached", "Activated"]
    assert partner.status == "active"
    assert partner.activated_at == at(3)


def test_another_course_does_not_complete_onboarding() -> None:
    partner = onboarding_partner()
    partner.attach_contract("C-1", at(1))
    partner.record_training("advanced-sales", "lan@acme.vn", at(2), ADMIN)
    assert not partner.complete_onboarding_if_ready(ADMIN, at(2), ONBOARDING)
    assert partner.status == "onboarding"
    assert not partner.can_register_deals


def test_complete_onboarding_is_a_no_op_once_active() -> None:
    partner = active_partner()
    partner.collect_events()
    assert not partner.complete_onboarding_if_ready(ADMIN, at(5), ONBOARDING)
    assert partner.collect_events() == []


def test_a_contract_cannot_be_attached_twice() -> None:
    partner = onboarding_partner()
    partner.attach_contract("C-1", at(1))
    partner.collect_events()
    with pytest.raises(ValidationFailed, match="contract C-1 is already attached to P-1"):
        partner.attach_contract("C-1", at(2))
    assert partner.collect_events() == []


@pytest.mark.parametrize(("course", "person"), [("", "lan@acme.vn"), (ONBOARDING, " ")])
def test_training_needs_a_course_and_a_person(course: str, person: str) -> None:
    partner = onboarding_partner()
    partner.collect_events()
    with pytest.raises(ValidationFailed, match="is required"):
        partner.record_training(course, person, at(1), ADMIN)
    assert partner.collect_events() == []


# ------------------------------------------------------------------ suspension, reinstatement, termination


def test_active_suspended_active() -> None:
    partner = active_partner()
    partner.collect_events()

    partner.suspend(ADMIN, "unpaid invoices", at(10))
    assert partner.status == "suspended"
    assert not partner.can_register_deals
    partner.reinstate(ADMIN, at(20))
    assert partner.status == "active"
    partner.suspend(ADMIN, "again", at(30))
    partner.reinstate(ADMIN, at(40), reason="paid")

    events = partner.collect_events()
    assert event_names(events) == ["Suspended", "Reinstated", "Suspended", "Reinstated"]
    assert events[0].reason == "unpaid invoices"
    assert events[1].reason is None
    assert events[3].reason == "paid"
    assert partner.status == "active"


@pytest.mark.parametrize("reason", [None, "", " \t "])
def test_suspend_requires_a_reason(reason: str | None) -> None:
    partner = active_partner()
    partner.collect_events()
    with pytest.raises(ReasonRequired, match="a reason is required to suspend a partner"):
        partner.suspend(ADMIN, reason, at(1))  # type: ignore[arg-type]
    assert partner.collect_events() == []
    assert partner.status == "active"


def test_suspend_requires_an_actor() -> None:
    partner = active_partner()
    partner.collect_events()
    with pytest.raises(ValidationFailed, match="actor is required"):
        partner.suspend(" ", "unpaid", at(1))
    assert partner.status == "active"


def test_only_an_active_partner_can_be_suspended() -> None:
    partner = onboarding_partner()
    with pytest.raises(
        InvalidTransition, match=r"cannot suspend partner P-1: it is onboarding \(allowed from active\)"
    ):
        partner.suspend(ADMIN, "reason", at(1))
    active = active_partner()
    active.suspend(ADMIN, "reason", at(1))
    with pytest.raises(InvalidTransition, match="it is suspended"):
        active.suspend(ADMIN, "reason", at(2))


def test_only_a_suspended_partner_can_be_reinstated() -> None:
    partner = active_partner()
    with pytest.raises(
        InvalidTransition, match=r"cannot reinstate partner P-1: it is active \(allowed from suspended\)"
    ):
        partner.reinstate(ADMIN, at(1))


@pytest.mark.parametrize("status", ["onboarding", "active", "suspended"])
def test_terminate_from_onboarding_active_or_suspended(status: str) -> None:
    partner = onboarding_partner() if status == "onboarding" else active_partner()
    if status == "suspended":
        partner.suspend(ADMIN, "unpaid", at(1))
    partner.collect_events()

    partner.terminate(ADMIN, "breach of contract", at(5))

    events = partner.collect_events()
    assert event_names(events) == ["Terminated"]
    assert events[0].reason == "breach of contract"
    assert partner.status == "terminated"
    assert partner.terminated_at == at(5)


@pytest.mark.parametrize("reason", [None, "", "  "])
def test_terminate_requires_a_reason(reason: str | None) -> None:
    partner = active_partner()
    partner.collect_events()
    with pytest.raises(ReasonRequired, match="a reason is required to terminate a partner"):
        partner.terminate(ADMIN, reason, at(1))  # type: ignore[arg-type]
    assert partner.collect_events() == []
    assert partner.status == "active"


def test_terminate_requires_an_actor() -> None:
    partner = active_partner()
    with pytest.raises(ValidationFailed, match="actor is required"):
        partner.terminate("", "breach", at(1))
    assert partner.status == "active"


def test_an_applied_partner_cannot_be_terminated() -> None:
    partner = applied_partner()
    with pytest.raises(InvalidTransition, match="cannot terminate partner P-1: it is applied"):
        partner.terminate(ADMIN, "breach", at(1))


def test_suspension_keeps_history_and_links() -> None:
    partner = active_partner()
    partner.grant_certification("crm-admin", "lan@acme.vn", at(1), None, ADMIN)
    partner.open_registration("R-1", at(2), capacity=5, tier="registered")
    partner.suspend(ADMIN, "audit", at(3))
    assert partner.contract_ids == ["C-1"]
    assert partner.open_registrations == ["R-1"]
    assert partner.certified_people(at(4)) == 1
    assert partner.has_completed(ONBOARDING)


# ------------------------------------------------------------------ segments


def test_change_segment_records_the_new_segments() -> None:
    partner = applied_partner()
    partner.collect_events()
    partner.change_segment(ADMIN, at(1), type="distributor", size="large", subregion="HCM")
    events = partner.collect_events()
    assert event_names(events) == ["SegmentChanged"]
    assert (partner.type, partner.region, partner.subregion, partner.size) == ("distributor", "VN", "HCM", "large")


def test_change_segment_refuses_no_change_and_invalid_values() -> None:
    partner = active_partner()
    partner.collect_events()
    with pytest.raises(ValidationFailed, match="the segment is unchanged"):
        partner.change_segment(ADMIN, at(1), type="reseller")
    with pytest.raises(ValidationFailed, match="unknown size"):
        partner.change_segment(ADMIN, at(1), size="xl")
    with pytest.raises(ValidationFailed, match="ISO 3166-1"):
        partner.change_segment(ADMIN, at(1), region="Vietnam")
    with pytest.raises(ValidationFailed, match="actor is required"):
        partner.change_segment("", at(1), size="large")
    assert partner.collect_events() == []
    assert partner.size == "small"


# ------------------------------------------------------------------ people


def test_certified_people_counts_distinct_people_with_unexpired_certificates() -> None:
    partner = active_partner()
    partner.grant_certification("crm-admin", "lan@acme.vn", at(0), at(100), ADMIN)
    partner.grant_certification("crm-dev", "lan@acme.vn", at(0), None, ADMIN)
    partner.grant_certification("crm-admin", "minh@acme.vn", at(10), at(50), ADMIN)

    assert partner.certified_people(at(-1)) == 0  # nothing granted yet
    assert partner.certified_people(at(5)) == 1  # lan, twice certified, counts once
    assert partner.certified_people(at(20)) == 2
    assert partner.certified_people(at(50)) == 1  # minh's certificate expired at that instant
    assert partner.certified_people(at(200)) == 1  # lan's permanent certificate


def test_a_certification_must_expire_after_it_is_granted() -> None:
    partner = active_partner()
    partner.collect_events()
    with pytest.raises(ValidationFailed, match="must expire after it is granted"):
        partner.grant_certification("crm-admin", "lan@acme.vn", at(10), at(10), ADMIN)
    assert partner.collect_events() == []


# ------------------------------------------------------------------ registration slots


def test_open_registration_needs_an_active_partner() -> None:
    partner = active_partner()
    partner.suspend(ADMIN, "audit", at(1))
    with pytest.raises(PartnerCannotRegister, match="partner P-1 is suspended and cannot register new deals"):
        partner.open_registration("R-1", at(2), capacity=5, tier="registered")
    onboarding = onboarding_partner("P-2")
    with pytest.raises(PartnerCannotRegister, match="is onboarding"):
        onboarding.open_registration("R-2", at(2), capacity=5, tier="registered")


def test_open_registration_respects_the_capacity() -> None:
    partner = active_partner()
    partner.open_registration("R-1", at(1), capacity=2, tier="registered")
    partner.open_registration("R-2", at(1), capacity=2, tier="registered")
    partner.collect_events()
    with pytest.raises(CapacityExceeded, match="already has 2 open registrations, the cap for tier registered is 2"):
        partner.open_registration("R-3", at(1), capacity=2, tier="registered")
    assert partner.collect_events() == []
    partner.close_registration("R-1", "withdrawn", at(2))
    partner.open_registration("R-3", at(3), capacity=2, tier="registered")
    assert partner.open_registrations == ["R-2", "R-3"]


def test_closing_an_unknown_registration_records_nothing() -> None:
    partner = active_partner()
    partner.collect_events()
    partner.close_registration("R-404", "won", at(1))
    assert partner.collect_events() == []


# ------------------------------------------------------------------ the application service


def test_full_lifecycle_through_the_application_contract_first(unit_world: World) -> None:
    app = unit_world.app
    plan = unit_world.plan()

    applied = app.apply_partner(
        partner_id="P-1", name="Acme", type="reseller", region="VN", size="small", actor=ADMIN, at=T0
    )
    assert applied.events == ["prm.partner.applied.v1"]
    assert applied.business_id == "P-1"
    assert applied.aggregate_id == Partner.id_for("P-1")

    approved = app.approve_partner("P-1", actor=ADMIN, at=at(1))
    assert approved.events == ["prm.partner.approved.v1", "prm.partner.onboarding_started.v1"]
    assert app.partner("P-1").status == "onboarding"

    signed = unit_world.sign("P-1", "C-1", when=at(2))
    assert signed == "C-1"
    assert app.partner("P-1").status == "onboarding"

    trained = app.record_training("P-1", course=ONBOARDING, person="lan@acme.vn", actor=ADMIN, at=at(3))
    assert trained.events == ["prm.partner.training_completed.v1", "prm.partner.activated.v1"]
    partner = app.partner("P-1")
    assert partner.status == "active"
    assert partner.activated_at == at(3)
    assert partner.contract_ids == ["C-1"]
    assert plan == "PLAN-STD"

    assert app.suspend_partner("P-1", actor=ADMIN, reason="audit", at=at(4)).events == ["prm.partner.suspended.v1"]
    assert app.reinstate_partner("P-1", actor=ADMIN, at=at(5)).events == ["prm.partner.reinstated.v1"]
    terminated = app.terminate_partner("P-1", actor=ADMIN, reason="breach", at=at(6))
    assert terminated.events == ["prm.partner.terminated.v1"]
    assert terminated.position == app.max_position()
    assert app.partner("P-1").status == "terminated"


def test_full_lifecycle_through_the_application_training_first(unit_world: World) -> None:
    app = unit_world.app
    unit_world.applied("P-1")
    app.approve_partner("P-1", actor=ADMIN, at=at(1))
    trained = app.record_training("P-1", course=ONBOARDING, person="lan@acme.vn", actor=ADMIN, at=at(2))
    assert trained.events == ["prm.partner.training_completed.v1"]

    signed = app.sign_contract(
        contract_id="C-1",
        partner_id="P-1",
        starts_on=at(3).date(),
        ends_on=at(400).date(),
        auto_renew=False,
        territory=["VN"],
        terms="terms",
        commission_plan_id=unit_world.plan(),
        actor=ADMIN,
        at=at(3),
    )
    assert signed.events == [
        "prm.contract.signed.v1",
        "prm.partner.contract_attached.v1",
        "prm.partner.activated.v1",
    ]
    assert app.partner("P-1").status == "active"


def test_the_onboarding_course_is_a_programme_setting(unit_world: World) -> None:
    app = unit_world.app
    app.change_settings({"onboarding_course": "intro-101"}, actor=ADMIN, reason="new curriculum", at=T0)
    unit_world.applied("P-1")
    app.approve_partner("P-1", actor=ADMIN, at=at(1))
    unit_world.sign("P-1", when=at(1))
    app.record_training("P-1", course=ONBOARDING, person="lan@acme.vn", actor=ADMIN, at=at(2))
    assert app.partner("P-1").status == "onboarding"
    app.record_training("P-1", course="intro-101", person="lan@acme.vn", actor=ADMIN, at=at(3))
    assert app.partner("P-1").status == "active"


def test_application_refusals_record_nothing(unit_world: World) -> None:
    app = unit_world.app
    unit_world.plan()
    unit_world.applied("P-1")
    position = app.max_position()

    with pytest.raises(AlreadyExists, match="partner P-1 already exists"):
        unit_world.applied("P-1")
    with pytest.raises(UnknownPartner, match="unknown partner 'P-404'"):
        app.approve_partner("P-404", actor=ADMIN, at=at(1))
    with pytest.raises(ReasonRequired):
        app.reject_partner("P-1", actor=ADMIN, reason="", at=at(1))
    with pytest.raises(InvalidTransition, match="cannot suspend partner P-1: it is applied"):
        app.suspend_partner("P-1", actor=ADMIN, reason="audit", at=at(1))
    with pytest.raises(InvalidTransition, match="cannot sign a contract with partner P-1: it is applied"):
        unit_world.sign("P-1", "C-1", when=at(1))
    with pytest.raises(NotFound, match="unknown contract 'C-1'"):
        app.contract("C-1")
    with pytest.raises(ValidationFailed, match="actor is required"):
        app.approve_partner("P-1", actor="", at=at(1))

    assert app.max_position() == position
    assert app.partner("P-1").status == "applied"
    assert app.partner("P-1").version == 1


def test_rejection_through_the_application(unit_world: World) -> None:
    app = unit_world.app
    unit_world.applied("P-1")
    result = app.reject_partner("P-1", actor=ADMIN, reason="outside our markets", at=at(1))
    assert result.events == ["prm.partner.rejected.v1"]
    with pytest.raises(InvalidTransition, match="it is rejected"):
        app.approve_partner("P-1", actor=ADMIN, at=at(2))


def test_positions_increase_with_every_command(unit_world: World) -> None:
    app = unit_world.app
    positions = []
    unit_world.applied("P-1")
    positions.append(app.max_position())
    positions.append(app.approve_partner("P-1", actor=ADMIN, at=at(1)).position)
    positions.append(app.change_segment("P-1", actor=ADMIN, size="medium", at=at(2)).position)
    positions.append(
        app.grant_certification("P-1", cert="c", person="p", actor=ADMIN, expires_at=None, granted_at=at(3)).position
    )
    assert positions == sorted(set(positions))
    assert positions[-1] == app.max_position()


def test_a_rich_partner_round_trips_through_the_event_store(unit_app: PartnerProgram) -> None:
    partner = active_partner("P-RT")
    partner.change_segment(ADMIN, at(1), region="TH", subregion="BKK", size="medium")
    partner.grant_certification("crm-admin", "lan@acme.vn", at(1), at(365), ADMIN)
    partner.grant_certification("crm-dev", "minh@acme.vn", at(2), None, ADMIN)
    partner.override_tier("silver", ADMIN, "strategic account", at(3))
    partner.open_registration("R-1", at(4), capacity=5, tier="silver")
    partner.open_registration("R-2", at(4), capacity=5, tier="silver")
    partner.close_registration("R-1", "won", at(5))
    partner.suspend(ADMIN, "audit", at(6))
    partner.reinstate(ADMIN, at(7), reason="audit passed")
    unit_app.save(partner)

    reloaded = unit_app.partner("P-RT")
    assert state_of(reloaded) == state_of(partner)
    assert reloaded.tier_at(at(2)) == "registered"
    assert reloaded.tier_at(at(3)) == "silver"
    assert reloaded.certified_people(at(10)) == 2
    assert reloaded.open_registrations == ["R-2"]


def test_an_application_reload_equals_a_replay_of_the_stored_events(unit_world: World) -> None:
    app = unit_world.app
    unit_world.active("P-1")
    app.suspend_partner("P-1", actor=ADMIN, reason="audit", at=at(1))
    stored = list(app.events.get(Partner.id_for("P-1")))
    replayed: Any = None
    for domain_event in stored:
        replayed = domain_event.mutate(replayed)
    assert state_of(app.partner("P-1")) == state_of(replayed)
    assert [type(e).__name__ for e in stored] == [
        "Applied",
        "Approved",
        "OnboardingStarted",
        "ContractAttached",
        "TrainingCompleted",
        "Activated",
        "Suspended",
    ]
