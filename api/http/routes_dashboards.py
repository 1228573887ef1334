"""Performance dashboards: every KPI of a period (month 2026-03, quarter 2026-Q1, year 2026).

Filters (``type``, ``tier``, ``region``, repeatable) select partners by their
segment and tier at the period's cutoff. A partner key gets its own dashboard
only: its partner is forced, and the channel-wide figures (direct and channel
revenue, indirect share) are left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import Response

from api.http import bodies as b
from api.http.auth import Auth, Principal, authorize
from api.http.problems import Problem
from api.http.reads import ALL_PROJECTIONS, DASHBOARDS, ReadPosition, consistent, json_response, services_of
from api.http.views import Dashboard, Kpi
from api.http.views import Leaderboard as LeaderboardView
from api.readmodels import dashboard_view
from projections.dashboard_queries import DashboardData, Filters, leaderboard

router = APIRouter(prefix="/v1", tags=["dashboards"], dependencies=[Depends(authorize)])

PeriodParam = Annotated[
    str,
    Query(pattern=b.DASHBOARD_PERIOD_PATTERN, description="A month 2026-03, a quarter 2026-Q1 or a year 2026."),
]
Types = Annotated[list[b.PartnerType] | None, Query(description="Partner types to keep (repeatable).")]
Tiers = Annotated[list[b.Tier] | None, Query(description="Tiers to keep, at the period's cutoff (repeatable).")]
Regions = Annotated[
    list[Annotated[str, Query(pattern=r"^[A-Z]{2}$")]] | None, Query(description="Regions (ISO country codes).")
]
AsOf = Annotated[b.Instant | None, Query(description="Evaluate the period as of this instant.")]
KpiName = Literal[
    "revenue",
    "direct_revenue",
    "channel_revenue",
    "indirect_share",
    "registrations",
    "win_rate",
    "pipeline",
    "active_partners",
    "time_to_first_deal",
    "growth",
    "tier_mix",
    "leaderboard",
    "commission",
    "conflicts",
]
CHANNEL_WIDE = ("direct_revenue", "channel_revenue", "indirect_share", "tier_mix", "leaderboard")


def _filters(type: Sequence[str] | None, tier: Sequence[str] | None, region: Sequence[str] | None) -> Filters:
    try:
        return Filters.of(type=type, tier=tier, region=region)
    except ValueError as exc:
        raise Problem(422, "validation_failed", str(exc)) from None


def _view(
    request: Request,
    principal: Principal,
    period: str,
    partner_id: str | None,
    filters: Filters,
    as_of: Any,
    top: int,
) -> dict[str, Any]:
    try:
        view = dashboard_view(
            services_of(request).store, period, partner_id=partner_id, filters=filters, as_of=as_of, top=top
        )
    except ValueError as exc:
        raise Problem(422, "validation_failed", str(exc)) from None
    if principal.is_partner:
        for key in CHANNEL_WIDE:
            view.pop(key, None)
    return view


@router.get("/dashboards", name="dashboard", response_model=Dashboard)
def dashboard(
    request: Request,
    principal: Auth,
    read: Annotated[ReadPosition, Depends(consistent(*ALL_PROJECTIONS))],
    period: PeriodParam,
    partner_id: Annotated[str | None, Query(max_length=100)] = None,
    type: Types = None,
    tier: Tiers = None,
    region: Regions = None,
    as_of: AsOf = None,
    top: Annotated[int, Query(ge=1, le=100, description="Leaderboard size.")] = 10,
) -> Response:
    """Every KPI for one partner (``partner_id``) or the channel, optionally filtered."""
    only = principal.partner_filter(partner_id)
    view = _view(request, principal, period, only, _filters(type, tier, region), as_of, top)
    return json_response(request, view, position=read.position)


@router.get("/dashboards/kpis/{kpi}", name="dashboard_kpi", response_model=Kpi)
def dashboard_kpi(
    request: Request,
    kpi: KpiName,
    principal: Auth,
    read: Annotated[ReadPosition, Depends(consistent(*ALL_PROJECTIONS))],
    period: PeriodParam,
    partner_id: Annotated[str | None, Query(max_length=100)] = None,
    type: Types = None,
    tier: Tiers = None,
    region: Regions = None,
    as_of: AsOf = None,
) -> Response:
    """One KPI of the dashboard."""
    view = _view(request, principal, period, partner_id, _filters(type, tier, region), as_of, 10)
    body = {"period": view["period"], "kpi": kpi, "partner_id": partner_id, "value": view.get(kpi)}
    return json_response(request, body, position=read.position)


@router.get("/dashboards/leaderboard", name="leaderboard", response_model=LeaderboardView)
def get_leaderboard(
    request: Request,
    principal: Auth,
    read: Annotated[ReadPosition, Depends(consistent(DASHBOARDS))],
    period: PeriodParam,
    type: Types = None,
    tier: Tiers = None,
    region: Regions = None,
    as_of: AsOf = None,
    top: Annotated[int, Query(ge=1, le=100)] = 10,
    currency: Annotated[str | None, Query(pattern=r"^[A-Z]{3}$")] = None,
) -> Response:
    """Top partners by net revenue per currency, with the rank change vs the previous period."""
    data = DashboardData.load(services_of(request).store)
    try:
        boards = leaderboard(data, period, filters=_filters(type, tier, region), as_of=as_of, top=top)
    except ValueError as exc:
        raise Problem(422, "validation_failed", str(exc)) from None
    body = {
        "period": period,
        "boards": {c: [asdict(row) for row in rows] for c, rows in boards.items() if currency in (None, c)},
    }
    return json_response(request, body, position=read.position)
