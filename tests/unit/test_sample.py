"""The sample programme: deterministic, believable, and accepted step by step by the domain."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from datetime import UTC, datetime
from uuid import UUID

import pytest

from api.sample import (
    COMMAND,
    INBOUND,
    INBOUND_TYPES,
    OPPORTUNITY_OPENED,
    SALE_RECORDED,
    SALE_REFUNDED,
    RunSummary,
    SampleStepError,
    Step,
    generate,
    run_commands,
    step_counts,
    to_cloudevent,
)
from domain.application import PartnerProgram
from domain.clock import quarter_label
from domain.conflicts import DIRECT_VS_PARTNER, PARTNER_VS_PARTNER, SALE_OUTSIDE_REGISTRATION


def new_app() -> PartnerProgram:
    return PartnerProgram(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})


@pytest.fixture(scope="module")
def steps() -> list[Step]:
    return generate()


@pytest.fixture(scope="module")
def run(steps: list[Step]) -> tuple[PartnerProgram, RunSummary]:
    app = new_app()
    return app, run_commands(app, steps)


def names(steps: list[Step], name: str) -> list[Step]:
    return [step for step in steps if step.name == name]


# ---------------------------------------------------------------- determinism


def test_the_same_seed_gives_the_same_steps() -> None:
    assert generate(seed=7) == generate(seed=7)


def test_different_seeds_give_different_steps() -> None:
    first, second = generate(seed=7), generate(seed=8)
    assert first != second
    assert {s.args["name"] for s in names(first, "apply_partner")} != {
        s.args["name"] for s in names(second, "apply_partner")
    }


def test_steps_are_ordered_by_time_in_utc(steps: list[Step]) -> None:
    assert all(step.at.tzinfo is not None and step.at.utcoffset() == UTC.utcoffset(None) for step in steps)
    assert [step.at for step in steps] == sorted(step.at for step in steps)
    assert {step.kind for step in steps} == {COMMAND, INBOUND}
    assert {step.name for step in steps if step.kind == INBOUND} == set(INBOUND_TYPES)


def test_command_times_are_datetimes_and_inbound_times_are_iso_strings(steps: list[Step]) -> None:
    for step in steps:
        if step.kind == COMMAND:
            for key in ("at", "submitted_at", "granted_at", "effective_at", "effective_from"):
                if key in step.args:
                    assert isinstance(step.args[key], datetime)
        else:
            when = step.args["opened_at"] if step.name == OPPORTUNITY_OPENED else step.args["occurred_at"]
            assert isinstance(when, str) and when.endswith("Z")
            assert datetime.fromisoformat(when) <= step.at


_CREATES = {
    "apply_partner": "partner_id",
    "sign_contract": "contract_id",
    "submit_registration": "registration_id",
    SALE_RECORDED: "sale_id",
    OPPORTUNITY_OPENED: "opportunity_id",
}


@pytest.mark.parametrize("seed", [1, 2, 3, 99, 2024])
def test_every_reference_follows_its_creation(seed: int) -> None:
    """Cheap check over many seeds: nothing refers to a partner, contract, registration or sale before it exists."""
    created: set[tuple[str, str]] = set()
    for step in generate(seed=seed):
        creates = _CREATES.get(step.name)
        for key in ("partner_id", "contract_id", "registration_id", "other_registration_id", "sale_id"):
            value = step.args.get(key)
            if value is None or key == creates:
                continue
            kind = "registration_id" if key == "other_registration_id" else key
            assert (kind, value) in created, f"{step.name} at {step.at} refers to {value} before it exists"
        if creates is not None:
            assert (creates, step.args[creates]) not in created
            created.add((creates, step.args[creates]))


def test_scale_multiplies_the_volume() -> None:
    one, two = generate(scale=1), generate(scale=2)
    assert 1.7 <= len(two) / len(one) <= 2.3
    assert len(names(two, "apply_partner")) == 2 * len(names(one, "apply_partner"))
    assert generate(scale=2) == two


# ---------------------------------------------------------------- a full run


def test_a_full_run_records_every_step(steps: list[Step], run: tuple[PartnerProgram, RunSummary]) -> None:
    app, summary = run
    assert summary.steps == len(steps)
    assert summary.counts == step_counts(steps)
    assert summary.duplicates == 0
    assert summary.events >= len(steps)
    assert summary.last_position == app.max_position() > 0


def test_progress_is_reported_and_a_refused_step_names_itself() -> None:
    steps = generate(seed=3, quarters=2)
    calls: list[tuple[int, int]] = []
    run_commands(new_app(), steps, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (len(steps), len(steps))
    assert len(calls) == len(steps)

    bad = Step(COMMAND, "approve_partner", {"partner_id": "P-9999", "actor": "x", "at": steps[0].at}, steps[0].at)
    with pytest.raises(SampleStepError) as error:
        run_commands(new_app(), [bad])
    assert error.value.index == 0
    assert error.value.step is bad


def test_partners_cover_every_type_region_and_lifecycle(
    steps: list[Step], run: tuple[PartnerProgram, RunSummary]
) -> None:
    app, _ = run
    partners = [app.partner(s.args["partner_id"]) for s in names(steps, "apply_partner")]
    assert 25 <= len(partners) <= 35
    assert {p.type for p in partners} == {"reseller", "distributor", "referral", "agent"}
    assert {p.size for p in partners} == {"small", "medium", "large"}
    regions = Counter(p.region for p in partners)
    assert regions["VN"] > len(partners) / 2
    assert len(regions) >= 5
    assert {p.subregion for p in partners if p.region == "VN"} == {"HN", "HCM", "DN"}
    assert any("Công ty" in p.name and any(ch in p.name for ch in "ăâđêôơư") for p in partners)
    statuses = Counter(p.status for p in partners)
    assert statuses["rejected"] >= 2
    assert 1 <= statuses["onboarding"] <= 2
    assert statuses["terminated"] == 1
    assert statuses["active"] >= 20
    assert names(steps, "suspend_partner") and names(steps, "reinstate_partner")
    assert {p.tier for p in partners} - {"registered"}, "some partners were promoted"
    assert any(p.certified_people(p.applied_at.replace(year=p.applied_at.year + 1)) >= 2 for p in partners)


def test_plan_contracts_and_overrides(steps: list[Step], run: tuple[PartnerProgram, RunSummary]) -> None:
    app, _ = run
    plan = app.plan("STD")
    assert [v["version"] for v in plan.versions] == [1, 2]
    assert plan.versions[0]["effective_from"] == datetime(2025, 1, 1, tzinfo=UTC)
    assert "services" in plan.versions[1]["terms"]["category_rates_bps"]
    contracts = [app.contract(s.args["contract_id"]) for s in names(steps, "sign_contract")]
    assert any(c.auto_renew for c in contracts) and not all(c.auto_renew for c in contracts)
    assert {c.status for c in contracts} >= {"signed", "expired", "terminated"}
    overrides = names(steps, "override_tier")
    assert overrides and all(s.args["reason"] and s.args["effective_at"].day == 1 for s in overrides)


def test_registrations_reach_every_outcome(steps: list[Step], run: tuple[PartnerProgram, RunSummary]) -> None:
    app, _ = run
    registrations = [app.registration(s.args["registration_id"]) for s in names(steps, "submit_registration")]
    statuses = Counter(r.status for r in registrations)
    for status in ("won", "expired", "lost", "withdrawn", "rejected"):
        assert statuses[status] > 0, status
    reasons = {s.args["reason_code"] for s in names(steps, "reject_registration")}
    assert {"duplicate", "existing_customer"} <= reasons
    assert len(reasons) >= 4
    assert names(steps, "extend_protection")
    assert len(names(steps, "expire_registrations")) == 6


def test_channel_conflicts_are_recorded_and_decided(steps: list[Step], run: tuple[PartnerProgram, RunSummary]) -> None:
    app, _ = run
    registrations = [app.registration(s.args["registration_id"]) for s in names(steps, "submit_registration")]
    conflicts = [c for r in registrations for c in r.conflicts_with]
    assert len(conflicts) >= 3
    assert {c["kind"] for c in conflicts} == {PARTNER_VS_PARTNER}
    assert {c["evidence"]["rule"] for c in conflicts} == {"domain", "tax_id", "name"}
    # No later conflicting registration was approved.
    assert all(r.status in ("rejected", "withdrawn", "submitted") for r in registrations if r.conflicts_with)
    decided = {s.args["kind"] for s in names(steps, "resolve_conflict") + names(steps, "dismiss_conflict")}
    assert decided == {PARTNER_VS_PARTNER, SALE_OUTSIDE_REGISTRATION, DIRECT_VS_PARTNER}
    assert all(r.resolutions for r in registrations if r.registration_id in _decided_registrations(steps))
    partner_names = [r.customer["name"] for r in registrations]
    assert "Công ty TNHH Minh Phát" in partner_names and "Minh Phat Co., Ltd" in partner_names


def _decided_registrations(steps: list[Step]) -> set[str]:
    return {s.args["registration_id"] for s in steps if s.name in ("resolve_conflict", "dismiss_conflict")}


def test_sales_refunds_and_opportunities(steps: list[Step], run: tuple[PartnerProgram, RunSummary]) -> None:
    app, _ = run
    sales = [app.sale(s.args["sale_id"]) for s in names(steps, SALE_RECORDED)]
    assert {s.currency for s in sales} == {"VND", "USD"}
    assert any(s.partner_id is None for s in sales), "direct sales"
    assert any(s.registration_bonus for s in sales)
    assert any(len(s.lines) >= 2 for s in sales)
    assert {line["category"] for s in sales for line in s.lines} == {"software", "hardware", "services"}
    flags = {flag for s in sales for flag in s.flags}
    assert not flags & {"registration_not_found", "registration_of_another_partner", "registration_not_protected"}
    refunded = [s for s in sales if s.refunded_minor]
    assert any(s.refunded_minor == s.total_minor for s in refunded), "full refunds"
    assert any(0 < s.refunded_minor < s.total_minor for s in refunded), "partial refunds"
    assert names(steps, OPPORTUNITY_OPENED)
    # VN partners sell in VND; amounts cross both quarterly accelerators for the big partners.
    revenue: dict[tuple[str, str, str], int] = defaultdict(int)
    for sale in sales:
        if sale.partner_id is not None:
            revenue[(sale.partner_id, sale.currency, quarter_label(sale.occurred_at))] += sale.total_minor
    for partner_id, currency, _ in revenue:
        assert currency == ("VND" if app.partner(partner_id).region == "VN" else "USD")
    assert any(v > 5_000_000_000 for (_, c, _), v in revenue.items() if c == "VND")
    assert any(v > 50_000_000 for (_, c, _), v in revenue.items() if c == "USD")


# ---------------------------------------------------------------- CloudEvents


def test_inbound_steps_serialise_as_cloudevents(steps: list[Step]) -> None:
    inbound = [step for step in steps if step.kind == INBOUND]
    ids = set()
    for step in inbound:
        event = json.loads(json.dumps(to_cloudevent(step), ensure_ascii=False))
        assert event["specversion"] == "1.0"
        assert event["type"] == step.name
        assert event["datacontenttype"] == "application/json"
        assert event["time"].endswith("Z")
        assert event["source"] == step.args["source"]
        UUID(event["id"])
        ids.add(event["id"])
        data = event["data"]
        assert "id" not in data and "source" not in data
        if step.name == OPPORTUNITY_OPENED:
            assert event["subject"] == data["opportunity_id"]
            assert set(data) == {
                "opportunity_id",
                "owner",
                "customer",
                "estimated_value_minor",
                "currency",
                "opened_at",
            }
        else:
            assert event["subject"] == data["sale_id"]
        if step.name == SALE_RECORDED:
            assert set(data) == {"sale_id", "partner_id", "registration_id", "customer", "lines", "occurred_at"}
            assert set(data["customer"]) == {"name", "domain", "tax_id", "country"}
            for line in data["lines"]:
                assert set(line) == {"sku", "category", "quantity", "unit_price_minor", "currency"}
        if step.name == SALE_REFUNDED:
            assert set(data) == {"sale_id", "refund_id", "amount_minor", "currency", "occurred_at", "reason"}
    assert len(ids) == len(inbound), "CloudEvents ids are unique"
    with pytest.raises(ValueError):
        to_cloudevent(next(step for step in steps if step.kind == COMMAND))


def test_cloudevent_ids_depend_on_the_seed() -> None:
    def first_id(seed: int) -> str:
        return str(next(s for s in generate(seed=seed) if s.kind == INBOUND).args["id"])

    assert first_id(1) == first_id(1)
    assert first_id(1) != first_id(2)
