"""Response shapes, for the OpenAPI document (and the schema-conformance tests).

The routes serialise the read models themselves (orjson, with an ETag); these
models describe what they send. Nested documents whose shape belongs to a
projection (a line's explanation, a conflict's evidence) are open objects.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

Json = dict[str, Any]


class CommandAccepted(BaseModel):
    """What a command recorded. The read side catches up asynchronously: read with ``?min_position=position``."""

    aggregate_id: str
    business_id: str
    position: int | None = Field(description="Event-store position reached; null when nothing new was recorded.")
    events: list[str] = Field(description="CloudEvents types of the events recorded.")
    duplicate: bool = False
    details: Json = Field(default_factory=dict)


class ExpiredRegistrations(BaseModel):
    expired: list[CommandAccepted]
    position: int | None


class Me(BaseModel):
    key_id: str
    role: str
    label: str
    partner_id: str | None


class PartnerSummary(BaseModel):
    partner_id: str
    name: str | None
    status: str | None
    tier: str
    type: str | None
    region: str | None
    subregion: str | None = None
    size: str | None = None
    applied_at: str | None
    approved_at: str | None
    activated_at: str | None
    first_sale_at: str | None


class ContractView(BaseModel):
    contract_id: str
    partner_id: str
    starts_on: str
    ends_on: str
    auto_renew: bool
    status: str
    terminated_on: str | None
    commission_plans: list[Json]
    signed_sequence: int


class Balance(BaseModel):
    partner_id: str
    currency: str
    as_of: str
    accrued: int
    payable: int
    paid: int
    payouts: int
    balance: int


class PartnerDetail(PartnerSummary):
    segments: list[Json]
    tiers: list[Json]
    statuses: list[Json]
    contracts: list[ContractView]
    balances: list[Balance]
    registrations: dict[str, int]


class RegistrationView(BaseModel):
    registration_id: str
    partner_id: str | None
    status: str
    customer: Json | None
    estimated_value_minor: int | None
    currency: str | None
    submitted_at: str | None
    approved_at: str | None
    closed_at: str | None
    protected_until: str | None
    conflict_ids: list[str]
    sequence: int | None


class CommissionLine(BaseModel):
    line_id: str
    kind: str
    partner_id: str
    currency: str
    amount_minor: int
    status: str
    sale_id: str | None
    occurred_at: str
    booked_at: str
    payable_at: str
    sequence: int
    links: list[str]
    explanation: Json


class Explanation(BaseModel):
    line_id: str
    kind: str
    partner_id: str
    currency: str
    amount_minor: int
    occurred_at: str
    booked_at: str
    source_event_ids: list[str]
    source_sequences: list[int]
    links: list[Json]
    sale: Json | None
    explanation: Json
    text: str


class Statement(BaseModel):
    partner_id: str
    currency: str
    month: str
    as_of: str
    complete: bool
    opening_balance: int
    accruals: int
    clawbacks: int
    adjustments: int
    payouts: int
    closing_balance: int
    lines: list[Json]


class ConflictView(BaseModel):
    conflict_id: str
    kind: str
    status: str
    partner_ids: list[str]
    registration_ids: list[str]
    detected_at: str
    sequence: int
    evidence: Json
    earlier: Json
    later: Json


class ConflictDetail(BaseModel):
    conflict: ConflictView
    evidence: Json
    parties: list[Json]
    moot: bool


class PlanView(BaseModel):
    plan_id: str
    name: str | None
    versions: list[Json]


class HistoryEntry(BaseModel):
    sequence: int
    id: str
    type: str
    subject: str
    recorded_at: str
    data: Json


class SaleView(BaseModel):
    sale_id: str
    partner_id: str | None
    registration_id: str | None
    source: str
    currency: str
    total_minor: int
    refunded_minor: int
    occurred_at: str
    flags: list[str]


class OpportunityView(BaseModel):
    opportunity_id: str
    owner: str
    currency: str
    estimated_value_minor: int
    opened_at: str
    source: str


class _Page(BaseModel):
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null on the last page.")
    total: int = Field(description="Items matching the filters, over all pages.")
    position: int | None = Field(description="Position of the read models answered from.")


class PartnerPage(_Page):
    items: list[PartnerSummary]


class RegistrationPage(_Page):
    items: list[RegistrationView]


class LinePage(_Page):
    items: list[CommissionLine]


class BalancePage(_Page):
    items: list[Balance]


class ConflictPage(_Page):
    items: list[ConflictView]


class PlanPage(_Page):
    items: list[PlanView]


class HistoryPage(_Page):
    items: list[HistoryEntry]


class ContractList(BaseModel):
    items: list[ContractView]


class DiscrepancyList(BaseModel):
    items: list[Json]


class Dashboard(BaseModel):
    """Every KPI of the period (see docs/kpis.md); money per currency in minor units."""

    period: str
    start: str
    cutoff: str
    partner_id: str | None
    filters: Json
    partners: list[str]
    revenue: Json
    registrations: Json
    win_rate: Json
    pipeline: Json
    active_partners: Json
    time_to_first_deal: Json
    growth: Json
    commission: Json
    conflicts: Json


class Kpi(BaseModel):
    period: str
    kpi: str
    partner_id: str | None
    value: Any


class Leaderboard(BaseModel):
    period: str
    boards: dict[str, list[Json]]


class SettingsView(BaseModel):
    settings: Json


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    checks: dict[str, Json]
