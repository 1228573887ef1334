"""Programme settings: the numbers an administrator can change through events.

The defaults are the product's documented defaults; a ``SettingsChanged``
event overrides any of them from its recording on. Nothing here is a constant
buried in code: rules read the settings in force.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime
from typing import Any, ClassVar

from domain.base import PrmAggregate, register_kind, require_actor, require_reason
from domain.clock import utc
from domain.errors import ValidationFailed
from domain.money import check_currency

TIERS: tuple[str, ...] = ("registered", "silver", "gold", "platinum")
PARTNER_TYPES: tuple[str, ...] = ("reseller", "distributor", "referral", "agent")
PARTNER_SIZES: tuple[str, ...] = ("small", "medium", "large")
PROGRAM_ID = "program"


def tier_rank(tier: str) -> int:
    try:
        return TIERS.index(tier)
    except ValueError:
        raise ValidationFailed(f"unknown tier {tier!r}; tiers are {', '.join(TIERS)}") from None


@dataclass(frozen=True)
class ProgramSettings:
    """Settings in force. Money in minor units of ``program_currency``."""

    program_currency: str = "USD"
    tier_revenue_thresholds_minor: dict[str, int] = field(
        default_factory=lambda: {"silver": 100_000_000, "gold": 500_000_000, "platinum": 2_000_000_000}
    )
    tier_certifications_required: dict[str, int] = field(
        default_factory=lambda: {"silver": 0, "gold": 2, "platinum": 4}
    )
    registration_capacity: dict[str, int] = field(
        default_factory=lambda: {"registered": 50, "silver": 200, "gold": 500, "platinum": 1000}
    )
    protection_days: int = 90
    protection_extension_days: int = 30
    onboarding_due_days: int = 30
    onboarding_course: str = "partner-onboarding"
    demotion_grace_quarters: int = 1
    contract_alert_days: tuple[int, ...] = (60, 30)
    name_similarity_threshold_bp: int = 9200  # 0.92, in basis points of similarity

    def with_changes(self, changes: dict[str, Any]) -> ProgramSettings:
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValidationFailed(f"unknown programme setting(s): {', '.join(unknown)}")
        values = dict(changes)
        if "contract_alert_days" in values:
            values["contract_alert_days"] = tuple(values["contract_alert_days"])
        new = replace(self, **values)
        new.validate()
        return new

    def validate(self) -> None:
        for name in ("protection_days", "protection_extension_days", "onboarding_due_days"):
            if not _whole(getattr(self, name)) or getattr(self, name) < 0:
                raise ValidationFailed(f"{name} must be a non-negative whole number of days")
        if not _whole(self.demotion_grace_quarters) or self.demotion_grace_quarters < 0:
            raise ValidationFailed("demotion_grace_quarters must be a non-negative whole number of quarters")
        if set(self.registration_capacity) != set(TIERS):
            raise ValidationFailed("registration_capacity must give a cap for every tier")
        if any(not _whole(v) or v < 0 for v in self.registration_capacity.values()):
            raise ValidationFailed("registration capacities must be whole numbers and must not be negative")
        upper = TIERS[1:]
        if set(self.tier_revenue_thresholds_minor) != set(upper):
            raise ValidationFailed("tier_revenue_thresholds_minor must give silver, gold and platinum")
        values = [self.tier_revenue_thresholds_minor[t] for t in upper]
        if not all(_whole(v) for v in values):
            raise ValidationFailed("tier revenue thresholds must be whole numbers of minor units")
        if values != sorted(values):
            raise ValidationFailed("tier revenue thresholds must rise with the tier")
        certifications = self.tier_certifications_required
        if not set(certifications) <= set(upper) or any(not _whole(v) or v < 0 for v in certifications.values()):
            raise ValidationFailed(
                "tier_certifications_required must give non-negative whole numbers of people for silver, gold, platinum"
            )
        if not _whole(self.name_similarity_threshold_bp) or not 0 < self.name_similarity_threshold_bp <= 10_000:
            raise ValidationFailed("name_similarity_threshold_bp must be within 1..10000")
        check_currency(self.program_currency)
        if not isinstance(self.onboarding_course, str) or not self.onboarding_course.strip():
            raise ValidationFailed("onboarding_course must name a course")
        if any(not _whole(d) or d <= 0 for d in self.contract_alert_days):
            raise ValidationFailed("contract_alert_days must be positive whole numbers of days")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["contract_alert_days"] = list(self.contract_alert_days)
        return data


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


DEFAULT_SETTINGS = ProgramSettings()


@register_kind
class Program(PrmAggregate):
    """The singleton programme: its settings history."""

    KIND: ClassVar[str] = "program"

    class Started(PrmAggregate.Created):
        partner_id: str | None
        program_id: str

    class SettingsChanged(PrmAggregate.Event):
        changes: dict[str, Any]
        actor: str
        reason: str
        at: datetime

        def apply(self, aggregate: Program) -> None:
            aggregate.settings = aggregate.settings.with_changes(self.changes)

    def __init__(self, program_id: str, partner_id: str | None = None) -> None:
        self.program_id = program_id
        self.partner_id = None
        self.settings = DEFAULT_SETTINGS

    @staticmethod
    def create_id(program_id: str, **_: Any) -> Any:
        return Program.id_for(program_id)

    @classmethod
    def start(cls) -> Program:
        program: Program = cls._create(cls.Started, id=cls.id_for(PROGRAM_ID), program_id=PROGRAM_ID, partner_id=None)
        return program

    def change_settings(self, changes: dict[str, Any], actor: str, reason: str, at: datetime) -> None:
        if not changes:
            raise ValidationFailed("no setting to change")
        self.settings.with_changes(changes)  # validate before recording
        self.trigger_event(
            self.SettingsChanged,
            partner_id=None,
            changes=dict(changes),
            actor=require_actor(actor),
            reason=require_reason(reason, "change programme settings"),
            at=utc(at),
        )
