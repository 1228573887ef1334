"""Commission plans and versions, recalculation requests, payouts, and programme settings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from domain.errors import (
    AlreadyExists,
    NotFound,
    OverlappingPlanVersion,
    ReasonRequired,
    UnknownPartner,
    ValidationFailed,
)
from domain.plan import CommissionPlan, Payout, check_period
from domain.program import DEFAULT_SETTINGS, PROGRAM_ID, Program, ProgramSettings
from tests.unit.conftest import ADMIN, T0, World, at, event_names, state_of

EFFECTIVE = datetime(2026, 1, 1, tzinfo=UTC)


def new_plan() -> CommissionPlan:
    return CommissionPlan.create(plan_id="PLAN-1", name="Standard 2026", actor=ADMIN, at=T0)


def publish(plan: CommissionPlan, effective_from: datetime = EFFECTIVE, terms: dict[str, Any] | None = None) -> int:
    return plan.publish_version(
        effective_from=effective_from, terms={} if terms is None else terms, actor=ADMIN, reason="2026 plan", at=T0
    )


# ------------------------------------------------------------------ plans and versions


def test_create_a_plan() -> None:
    plan = new_plan()
    assert event_names(plan.collect_events()) == ["Created"]
    assert (plan.plan_id, plan.name, plan.versions, plan.partner_id) == ("PLAN-1", "Standard 2026", [], None)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"plan_id": ""}, "plan_id is required"),
        ({"name": " "}, "name is required"),
        ({"actor": ""}, "actor is required"),
    ],
)
def test_create_refuses_invalid_plans(changes: dict[str, Any], message: str) -> None:
    arguments: dict[str, Any] = {"plan_id": "PLAN-1", "name": "Standard", "actor": ADMIN, "at": T0}
    with pytest.raises(ValidationFailed, match=message):
        CommissionPlan.create(**{**arguments, **changes})


def test_versions_are_numbered_and_empty_terms_take_the_defaults() -> None:
    plan = new_plan()
    plan.collect_events()
    assert publish(plan) == 1
    assert (
        publish(
            plan,
            EFFECTIVE + timedelta(days=90),
            {"tier_rates_bps": {"registered": 600, "silver": 900, "gold": 1100, "platinum": 1300}},
        )
        == 2
    )

    events = plan.collect_events()
    assert event_names(events) == ["VersionPublished", "VersionPublished"]
    assert [v["version"] for v in plan.versions] == [1, 2]
    first = plan.versions[0]["terms"]
    assert first["tier_rates_bps"] == {"gold": 1000, "platinum": 1200, "registered": 500, "silver": 800}
    assert first["registration_bonus_bps"] == 200
    assert first["hold_days"] == 30
    assert first["accelerators"]["VND"] == [
        {"above_minor": 1_000_000_000, "extra_bps": 200},
        {"above_minor": 5_000_000_000, "extra_bps": 300},
    ]
    assert plan.versions[1]["terms"]["tier_rates_bps"]["registered"] == 600
    assert plan.versions[1]["effective_from"] == EFFECTIVE + timedelta(days=90)


def test_a_version_with_the_same_effective_from_is_refused() -> None:
    plan = new_plan()
    publish(plan)
    plan.collect_events()
    hanoi = EFFECTIVE.astimezone(timezone(timedelta(hours=7)))  # the same instant, written in another zone
    with pytest.raises(
        OverlappingPlanVersion, match="plan PLAN-1 already has version 1 effective from 2026-01-01T00:00:00"
    ):
        publish(plan, hanoi)
    assert plan.collect_events() == []
    assert len(plan.versions) == 1


def test_an_earlier_effective_from_is_a_new_version() -> None:
    plan = new_plan()
    publish(plan)
    assert publish(plan, EFFECTIVE - timedelta(days=1)) == 2


@pytest.mark.parametrize(
    ("terms", "message"),
    [
        ({"bonus": 1}, "unknown key"),
        ({"tier_rates_bps": {"registered": -1, "silver": 1, "gold": 1, "platinum": 1}}, "negative rate"),
        ({"tier_rates_bps": {"registered": 500}}, "missing rate for tier"),
        ({"tier_rates_bps": {"registered": 1, "silver": 1, "gold": 1, "platinum": 1, "diamond": 1}}, "unknown tier"),
        ({"tier_rates_bps": {"registered": 1.5, "silver": 1, "gold": 1, "platinum": 1}}, "must be an integer"),
        ({"registration_bonus_bps": -5}, "registration_bonus_bps"),
        ({"hold_days": -1}, "hold_days"),
        (
            {"accelerators": {"VND": [{"above_minor": 10, "extra_bps": 1}, {"above_minor": 5, "extra_bps": 1}]}},
            "sorted",
        ),
        ({"accelerators": {"dong": []}}, "currency must be three upper-case letters"),
        ({"category_rates_bps": {"software": {"gold": -1}}}, "negative rate"),
        ([], "expected an object"),
    ],
)
def test_invalid_terms_are_refused(terms: Any, message: str) -> None:
    plan = new_plan()
    plan.collect_events()
    with pytest.raises(ValidationFailed, match=f"invalid plan terms: .*{message}"):
        publish(plan, terms=terms)
    assert plan.collect_events() == []
    assert plan.versions == []


def test_a_version_needs_a_reason_and_an_actor() -> None:
    plan = new_plan()
    plan.collect_events()
    with pytest.raises(ReasonRequired, match="a reason is required to publish a plan version"):
        plan.publish_version(effective_from=EFFECTIVE, terms={}, actor=ADMIN, reason="", at=T0)
    with pytest.raises(ValidationFailed, match="actor is required"):
        plan.publish_version(effective_from=EFFECTIVE, terms={}, actor=" ", reason="r", at=T0)
    with pytest.raises(ValueError, match="naive datetime"):
        plan.publish_version(effective_from=datetime(2026, 1, 1), terms={}, actor=ADMIN, reason="r", at=T0)
    assert plan.collect_events() == []


def test_recalculation_needs_a_version() -> None:
    plan = new_plan()
    plan.collect_events()
    with pytest.raises(ValidationFailed, match="plan PLAN-1 has no version to recalculate with"):
        plan.request_recalculation(period="2026-03", actor=ADMIN, reason="new rates", at=T0)
    assert plan.collect_events() == []
    publish(plan)
    plan.request_recalculation(period=" 2026-Q1 ", actor=ADMIN, reason="new rates", at=T0)
    events = plan.collect_events()
    assert event_names(events) == ["VersionPublished", "RecalculationRequested"]
    assert events[-1].period == "2026-Q1"


def test_recalculation_needs_a_reason() -> None:
    plan = new_plan()
    publish(plan)
    with pytest.raises(ReasonRequired, match="a reason is required to request a recalculation"):
        plan.request_recalculation(period="2026-03", actor=ADMIN, reason="", at=T0)


@pytest.mark.parametrize("period", ["2026-03", "2026-12", "2026-Q1", "2026-Q4", " 2026-01 "])
def test_valid_periods(period: str) -> None:
    assert check_period(period) == period.strip()


@pytest.mark.parametrize(
    "period", ["2026-13", "2026-00", "2026-Q5", "2026-Q0", "26-01", "2026/03", "2026-3", "2026-Q12", ""]
)
def test_invalid_periods(period: str) -> None:
    with pytest.raises(ValidationFailed, match="must be a month like 2026-03 or a quarter like 2026-Q1"):
        check_period(period)


def test_plans_through_the_application(unit_world: World) -> None:
    app = unit_world.app
    created = app.create_plan(plan_id="PLAN-1", name="Standard", actor=ADMIN, at=T0)
    assert created.events == ["prm.plan.created.v1"]
    with pytest.raises(AlreadyExists, match="commission plan PLAN-1 already exists"):
        app.create_plan(plan_id="PLAN-1", name="Other", actor=ADMIN, at=T0)
    with pytest.raises(ValidationFailed, match="no version to recalculate with"):
        app.request_recalculation("PLAN-1", period="2026-01", actor=ADMIN, reason="r", at=T0)

    published = app.publish_plan_version("PLAN-1", effective_from=EFFECTIVE, terms={}, actor=ADMIN, reason="r", at=T0)
    assert published.events == ["prm.plan.version_published.v1"]
    assert published.details == {"version": 1}
    with pytest.raises(OverlappingPlanVersion):
        app.publish_plan_version("PLAN-1", effective_from=EFFECTIVE, terms={}, actor=ADMIN, reason="r", at=T0)
    recalculation = app.request_recalculation("PLAN-1", period="2026-01", actor=ADMIN, reason="r", at=T0)
    assert recalculation.events == ["prm.plan.recalculation_requested.v1"]
    with pytest.raises(NotFound, match="unknown commission plan 'PLAN-404'"):
        app.publish_plan_version("PLAN-404", effective_from=EFFECTIVE, terms={}, actor=ADMIN, reason="r", at=T0)


def test_a_plan_round_trips(unit_world: World) -> None:
    app = unit_world.app
    plan = new_plan()
    publish(plan)
    publish(
        plan, EFFECTIVE + timedelta(days=90), {"category_rates_bps": {"hardware": {"gold": 300}}, "accelerators": {}}
    )
    plan.request_recalculation(period="2026-Q2", actor=ADMIN, reason="r", at=T0)
    app.save(plan)
    assert state_of(app.plan("PLAN-1")) == state_of(plan)


# ------------------------------------------------------------------ payouts


def record_payout(world: World, **changes: Any) -> Any:
    arguments: dict[str, Any] = {
        "payout_id": "PO-1",
        "partner_id": "P-1",
        "currency": "VND",
        "period": "2026-03",
        "amount_minor": 1_500_000,
        "payable_minor": 1_500_000,
        "actor": ADMIN,
        "reference": "bank-ref-1",
        "at": at(90),
    }
    arguments.update(changes)
    return world.app.record_payout(**arguments)


def test_a_payout_pays_exactly_the_payable_balance(unit_world: World) -> None:
    app = unit_world.app
    unit_world.active("P-1")
    result = record_payout(unit_world)
    assert result.events == ["prm.payout.recorded.v1"]
    payout = app.repository.get(Payout.id_for("PO-1"))
    assert (payout.partner_id, payout.amount_minor, payout.currency, payout.period) == (
        "P-1",
        1_500_000,
        "VND",
        "2026-03",
    )


@pytest.mark.parametrize(("amount", "payable"), [(1_000_000, 1_500_000), (1_500_001, 1_500_000), (0, 0), (-10, -10)])
def test_a_payout_of_another_amount_is_refused(unit_world: World, amount: int, payable: int) -> None:
    app = unit_world.app
    unit_world.active("P-1")
    position = app.max_position()
    with pytest.raises(
        ValidationFailed,
        match=f"a payout pays exactly the payable balance: {payable} VND is payable, {amount} was asked",
    ):
        record_payout(unit_world, amount_minor=amount, payable_minor=payable)
    assert app.max_position() == position


@pytest.mark.parametrize("changes", [{"actor": ""}, {"currency": "dollars"}])
def test_a_payout_needs_an_actor_and_a_currency(unit_world: World, changes: dict[str, Any]) -> None:
    unit_world.active("P-1")
    with pytest.raises(ValidationFailed):
        record_payout(unit_world, **changes)


def test_payout_refusals(unit_world: World) -> None:
    unit_world.active("P-1")
    with pytest.raises(UnknownPartner):
        record_payout(unit_world, partner_id="P-404")
    with pytest.raises(ValidationFailed, match="period '2026-3'"):
        record_payout(unit_world, period="2026-3")
    record_payout(unit_world)
    with pytest.raises(AlreadyExists, match="payout PO-1 already exists"):
        record_payout(unit_world)


# ------------------------------------------------------------------ programme settings


def test_default_settings_are_the_documented_defaults(unit_world: World) -> None:
    settings = unit_world.app.settings()
    assert settings == DEFAULT_SETTINGS
    assert settings.registration_capacity == {"registered": 50, "silver": 200, "gold": 500, "platinum": 1000}
    assert settings.tier_revenue_thresholds_minor == {
        "silver": 100_000_000,
        "gold": 500_000_000,
        "platinum": 2_000_000_000,
    }
    assert settings.tier_certifications_required == {"silver": 0, "gold": 2, "platinum": 4}
    assert (settings.protection_days, settings.protection_extension_days, settings.onboarding_due_days) == (90, 30, 30)
    assert settings.onboarding_course == "partner-onboarding"
    assert settings.demotion_grace_quarters == 1
    assert settings.contract_alert_days == (60, 30)
    assert settings.name_similarity_threshold_bp == 9200


def test_change_settings_records_an_event_and_applies_from_then_on(unit_world: World) -> None:
    app = unit_world.app
    first = app.change_settings({"protection_days": 60}, actor=ADMIN, reason="faster cycle", at=T0)
    assert first.events == ["prm.program.started.v1", "prm.program.settings_changed.v1"]
    second = app.change_settings({"contract_alert_days": [90, 30, 7]}, actor=ADMIN, reason="earlier alerts", at=at(1))
    assert second.events == ["prm.program.settings_changed.v1"]
    settings = app.settings()
    assert settings.protection_days == 60
    assert settings.contract_alert_days == (90, 30, 7)
    assert settings.protection_extension_days == 30  # untouched

    program = app.repository.get(Program.id_for(PROGRAM_ID))
    replayed: Any = None
    for domain_event in app.events.get(program.id):
        replayed = domain_event.mutate(replayed)
    assert replayed.settings == settings
    assert state_of(replayed) == state_of(program)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"free_lunch": True}, "unknown programme setting"),
        ({"protection_days": -1}, "protection_days must be a non-negative whole number of days"),
        ({"protection_days": True}, "protection_days must be a non-negative whole number of days"),
        ({"contract_alert_days": [60, 0]}, "contract_alert_days must be positive whole numbers"),
        ({"name_similarity_threshold_bp": 0.92}, "within 1..10000"),
        ({"protection_extension_days": 1.5}, "protection_extension_days must be a non-negative whole number"),
        ({"onboarding_due_days": "30"}, "onboarding_due_days must be a non-negative whole number"),
        ({"registration_capacity": {"registered": 5}}, "registration_capacity must give a cap for every tier"),
        ({"registration_capacity": {"registered": -1, "silver": 1, "gold": 1, "platinum": 1}}, "must not be negative"),
        (
            {"registration_capacity": {"registered": "5", "silver": 1, "gold": 1, "platinum": 1}},
            "registration capacities",
        ),
        ({"tier_revenue_thresholds_minor": {"silver": 1, "gold": 2}}, "must give silver, gold and platinum"),
        ({"tier_revenue_thresholds_minor": {"silver": 3, "gold": 2, "platinum": 4}}, "must rise with the tier"),
        ({"name_similarity_threshold_bp": 0}, "within 1..10000"),
        ({"name_similarity_threshold_bp": 10_001}, "within 1..10000"),
        ({"demotion_grace_quarters": -1}, "demotion_grace_quarters"),
        ({"tier_certifications_required": {"silver": 0, "gold": -2, "platinum": 4}}, "tier_certifications_required"),
        ({"program_currency": "dollars"}, "ISO 4217"),
        ({"onboarding_course": " "}, "onboarding_course"),
    ],
)
def test_invalid_settings_are_refused(unit_world: World, changes: dict[str, Any], message: str) -> None:
    app = unit_world.app
    with pytest.raises(ValidationFailed, match=message):
        app.change_settings(changes, actor=ADMIN, reason="r", at=T0)
    assert app.settings() == DEFAULT_SETTINGS
    assert app.max_position() == 0


def test_change_settings_needs_changes_a_reason_and_an_actor(unit_world: World) -> None:
    app = unit_world.app
    with pytest.raises(ValidationFailed, match="no setting to change"):
        app.change_settings({}, actor=ADMIN, reason="r", at=T0)
    with pytest.raises(ReasonRequired, match="a reason is required to change programme settings"):
        app.change_settings({"protection_days": 60}, actor=ADMIN, reason="", at=T0)
    with pytest.raises(ValidationFailed, match="actor is required"):
        app.change_settings({"protection_days": 60}, actor="", reason="r", at=T0)
    assert app.max_position() == 0


def test_settings_changes_are_recorded_in_utc() -> None:
    program = Program.start()
    with pytest.raises(ValueError, match="naive datetime"):
        program.change_settings({"protection_days": 60}, ADMIN, "r", datetime(2026, 1, 5))
    program.change_settings({"protection_days": 60}, ADMIN, "r", T0.astimezone(timezone(timedelta(hours=7))))
    events = program.collect_events()
    assert event_names(events) == ["Started", "SettingsChanged"]
    assert events[-1].at == T0
    assert events[-1].at.utcoffset() == timedelta(0)


def test_with_changes_never_mutates_the_settings_in_force() -> None:
    settings = ProgramSettings()
    changed = settings.with_changes({"registration_capacity": {"registered": 1, "silver": 2, "gold": 3, "platinum": 4}})
    assert changed.registration_capacity["registered"] == 1
    assert settings.registration_capacity["registered"] == 50
    assert DEFAULT_SETTINGS.registration_capacity["registered"] == 50
