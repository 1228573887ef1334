"""Request bodies of the command endpoints (pydantic v2).

Types are checked here so that the domain only ever sees well-typed values;
the domain still decides every business rule. Integers are strict (no ``3.0``,
no ``"3"``), instants carry a timezone and lie in years 1970-2999, text is
bounded and never contains NUL, and unknown fields are refused.

The sale, refund and opportunity bodies are the ``data`` of the Kafka wire
contract (``prm.sale.recorded.v1``...; see ``consumers/wire.py``), so an
internal service can send the same payload over HTTP or Kafka.

Who did it (``actor``) is never in a body: it is the label of the API key.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, model_validator
from pydantic_core import PydanticCustomError

MAX_MINOR = 10**15
"""Largest amount accepted (minor units): far above any real deal, far below 64-bit overflow in sums."""
MAX_BPS = 100_000

# The domain's vocabularies (``domain.program``, ``domain.registration``), spelt out for the schema;
# a unit test checks that they stay equal.
PartnerType = Literal["reseller", "distributor", "referral", "agent"]
PartnerSize = Literal["small", "medium", "large"]
Tier = Literal["registered", "silver", "gold", "platinum"]
UpperTier = Literal["silver", "gold", "platinum"]
RejectionReason = Literal[
    "duplicate", "existing_customer", "direct_sales_active", "outside_territory", "insufficient_information", "other"
]


def _text(value: str) -> str:
    if not value.strip():
        raise PydanticCustomError("blank", "must not be blank")
    return _no_nul(value)


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise PydanticCustomError("nul_character", "must not contain the NUL character")
    return value


def _instant(value: datetime) -> datetime:
    try:
        moment = value.astimezone(UTC)
    except OverflowError:
        raise PydanticCustomError("datetime_range", "instant out of range") from None
    if not 1970 <= moment.year <= 2999:
        raise PydanticCustomError("datetime_range", "instants must lie in the years 1970 to 2999")
    return moment


def _day(value: date) -> date:
    if not 1970 <= value.year <= 2999:
        raise PydanticCustomError("date_range", "dates must lie in the years 1970 to 2999")
    return value


Text = Annotated[str, StringConstraints(min_length=1, max_length=500), AfterValidator(_text)]
LongText = Annotated[str, StringConstraints(min_length=1, max_length=4000), AfterValidator(_text)]
Id = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$"),
    Field(description="A business id: letters, digits and . _ : -, at most 100 characters (P-0042, R-0007)."),
]
Country = Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")]
Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$"), Field(description="ISO 4217 code: VND, USD…")]
Minor = Annotated[int, Field(strict=True, ge=0, le=MAX_MINOR)]
PositiveMinor = Annotated[int, Field(strict=True, gt=0, le=MAX_MINOR)]
Bps = Annotated[int, Field(strict=True, ge=0, le=MAX_BPS)]
Instant = Annotated[AwareDatetime, AfterValidator(_instant)]
Day = Annotated[date, AfterValidator(_day)]
Period = Annotated[
    str,
    StringConstraints(pattern=r"^(19[7-9][0-9]|2[0-9]{3})-(0[1-9]|1[0-2]|Q[1-4])$"),
    Field(description="A month 2026-03 or a quarter 2026-Q1."),
]
MONTH_PATTERN = r"^(19[7-9][0-9]|2[0-9]{3})-(0[1-9]|1[0-2])$"
DASHBOARD_PERIOD_PATTERN = r"^(19[7-9][0-9]|2[0-9]{3})(-(0[1-9]|1[0-2]|Q[1-4]))?$"
When = Annotated[Instant | None, Field(description="Business time of the step (UTC instant); default: now.")]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- partners


class PartnerApplication(Body):
    partner_id: Id
    name: Text
    type: PartnerType
    region: Country
    size: PartnerSize
    subregion: Text | None = None
    contact_email: Annotated[str, StringConstraints(max_length=254, pattern=r"^[^@\s\x00]+@[^@\s\x00]+$")] | None = None
    at: When = None


class OptionalReason(Body):
    reason: Text | None = None
    at: When = None


class RequiredReason(Body):
    reason: Text
    at: When = None


class SegmentChange(Body):
    type: PartnerType | None = None
    region: Country | None = None
    subregion: Text | None = None
    size: PartnerSize | None = None
    at: When = None


class TierOverride(Body):
    tier: Tier
    reason: Text
    effective_at: When = None


class TierEvaluation(Body):
    quarter_end: Instant
    revenue_minor: Minor
    at: When = None


class Training(Body):
    course: Text
    person: Text
    at: When = None


class Certification(Body):
    cert: Text
    person: Text
    expires_at: Instant | None = None
    granted_at: When = None


# ---------------------------------------------------------------- contracts


class ContractSigning(Body):
    contract_id: Id
    partner_id: Id
    starts_on: Day
    ends_on: Day
    auto_renew: Annotated[bool, Field(strict=True)] = False
    territory: Annotated[list[Country], Field(max_length=250)]
    terms: LongText
    commission_plan_id: Id
    at: When = None


class ContractAmendment(Body):
    reason: Text
    terms: LongText | None = None
    territory: Annotated[list[Country], Field(max_length=250)] | None = None
    commission_plan_id: Id | None = None
    at: When = None


class ContractRenewal(Body):
    ends_on: Day | None = None
    at: When = None


class ContractTermination(Body):
    reason: Text
    effective_on: Day | None = None
    at: When = None


class Step(Body):
    at: When = None


# ---------------------------------------------------------------- registrations


class Customer(Body):
    name: Text
    domain: Text | None = None
    tax_id: Text | None = None
    country: Country | None = None


class RegistrationSubmission(Body):
    registration_id: Id
    partner_id: Id
    customer: Customer
    estimated_value_minor: Minor
    currency: Currency
    products: Annotated[list[Text], Field(min_length=1, max_length=50)]
    expected_close_on: Day | None = None
    submitted_at: When = None


class RegistrationRejection(Body):
    reason_code: RejectionReason
    reason: Text | None = None
    at: When = None


# ---------------------------------------------------------------- sales (the wire contract's data)


class SaleLine(Body):
    sku: Text
    category: Text | None = None
    quantity: Annotated[int, Field(strict=True, gt=0, le=10**9)]
    unit_price_minor: Minor
    currency: Currency


class SaleRecording(Body):
    """``data`` of ``prm.sale.recorded.v1``; ``partner_id`` null or absent: a direct sale."""

    sale_id: Text
    partner_id: Text | None = None
    registration_id: Text | None = None
    customer: Customer
    lines: Annotated[list[SaleLine], Field(min_length=1, max_length=1000)]
    occurred_at: Instant

    @model_validator(mode="after")
    def _one_currency_and_bounded(self) -> SaleRecording:
        currencies = sorted({line.currency for line in self.lines})
        if len(currencies) > 1:
            raise PydanticCustomError(
                "currency_mismatch",
                "all lines of a sale must share one currency, got {currencies}",
                {"currencies": ", ".join(currencies)},
            )
        if sum(line.quantity * line.unit_price_minor for line in self.lines) > MAX_MINOR:
            raise PydanticCustomError("amount_range", "the sale total must not exceed {limit}", {"limit": MAX_MINOR})
        return self


class RefundRecording(Body):
    """``data`` of ``prm.sale.refunded.v1`` without ``sale_id`` (it is in the path)."""

    refund_id: Text
    amount_minor: PositiveMinor
    currency: Currency
    occurred_at: Instant
    reason: LongText | None = None


class OpportunityOpening(Body):
    """``data`` of ``prm.opportunity.opened.v1``."""

    opportunity_id: Text
    owner: Text
    customer: Customer
    estimated_value_minor: Minor
    currency: Currency
    opened_at: Instant


# ---------------------------------------------------------------- plans, payouts, settings


class PlanCreation(Body):
    plan_id: Id
    name: Text
    at: When = None


class Accelerator(Body):
    above_minor: Minor
    extra_bps: Bps


class PlanTermsBody(Body):
    """Missing keys take the spec's defaults."""

    tier_rates_bps: dict[Tier, Bps] | None = None
    category_rates_bps: Annotated[dict[Text, dict[Tier, Bps]], Field(max_length=100)] | None = None
    registration_bonus_bps: Bps | None = None
    accelerators: (
        Annotated[dict[Currency, Annotated[list[Accelerator], Field(max_length=20)]], Field(max_length=50)] | None
    ) = None
    hold_days: Annotated[int, Field(strict=True, ge=0, le=3650)] | None = None

    def to_terms(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class PlanVersion(Body):
    effective_from: Instant
    terms: PlanTermsBody
    reason: Text
    at: When = None


class RecalculationRequest(Body):
    period: Period
    reason: Text
    at: When = None


class PayoutRecording(Body):
    payout_id: Id
    partner_id: Id
    currency: Currency
    period: Period
    amount_minor: Annotated[
        PositiveMinor | None,
        Field(description="Optional: when given, it must equal the payable balance (a safety check)."),
    ] = None
    reference: Text | None = None


Days = Annotated[int, Field(strict=True, ge=0, le=3650)]


class SettingsChanges(Body):
    """Programme settings to change (any subset); the domain validates the result as a whole."""

    program_currency: Currency | None = None
    tier_revenue_thresholds_minor: dict[UpperTier, Minor] | None = None
    tier_certifications_required: dict[UpperTier, Annotated[int, Field(strict=True, ge=0, le=10_000)]] | None = None
    registration_capacity: dict[Tier, Annotated[int, Field(strict=True, ge=0, le=1_000_000)]] | None = None
    protection_days: Days | None = None
    protection_extension_days: Days | None = None
    onboarding_due_days: Days | None = None
    onboarding_course: Text | None = None
    demotion_grace_quarters: Annotated[int, Field(strict=True, ge=0, le=40)] | None = None
    contract_alert_days: (
        Annotated[list[Annotated[int, Field(strict=True, gt=0, le=3650)]], Field(max_length=20)] | None
    ) = None
    name_similarity_threshold_bp: Annotated[int, Field(strict=True, ge=1, le=10_000)] | None = None


class SettingsChange(Body):
    changes: SettingsChanges
    reason: Text
    at: When = None


# ---------------------------------------------------------------- conflicts


class ConflictResolution(Body):
    winner: Annotated[
        Text, Field(description="The winning party: one of the two registrations, 'direct', or a partner id.")
    ]
    reason: Text
    at: When = None


class ConflictDismissal(Body):
    reason: Text
    at: When = None
