"""The commission ledger: lines, explanations, balances, monthly statements, discrepancies.

``as_of`` gives what the live system showed at that instant (lines booked at or
before it, their status then), so an auditor can look at any past moment.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import Response

from api.http import bodies as b
from api.http.auth import Auth, authorize
from api.http.problems import Problem
from api.http.reads import LEDGER, ReadPosition, consistent, json_response, paginate, services_of
from api.http.views import BalancePage, DiscrepancyList, Explanation, LinePage, Statement
from api.readmodels import LedgerSnapshot, all_balances, commission_lines, partner_balances
from projections import ledger_queries

router = APIRouter(prefix="/v1", tags=["commissions"], dependencies=[Depends(authorize)])

Read = Annotated[ReadPosition, Depends(consistent(LEDGER))]
PartnerFilter = Annotated[str | None, Query(max_length=100)]
CurrencyFilter = Annotated[str | None, Query(pattern=r"^[A-Z]{3}$")]
AsOf = Annotated[b.Instant | None, Query(description="Show the ledger as it was at this instant (default now).")]
LineKind = Literal["accrual", "clawback", "adjustment", "payout"]
LineStatus = Literal["accrued", "payable", "paid"]
LineSort = Literal["sequence", "-sequence", "occurred_at", "-occurred_at", "amount_minor", "-amount_minor"]
_SORTS = {
    "sequence": lambda line: line["sequence"],
    "occurred_at": lambda line: line["occurred_at"],
    "amount_minor": lambda line: line["amount_minor"],
}


@router.get("/commissions/lines", name="list_commission_lines", response_model=LinePage)
def list_lines(
    request: Request,
    principal: Auth,
    read: Read,
    partner_id: PartnerFilter = None,
    currency: CurrencyFilter = None,
    kind: LineKind | None = None,
    status: LineStatus | None = None,
    as_of: AsOf = None,
    sort: LineSort = "sequence",
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[str | None, Query(max_length=2000)] = None,
) -> Response:
    """Ledger lines with their status; a partner key sees only its own."""
    only = principal.partner_filter(partner_id)
    snapshot = LedgerSnapshot.load(services_of(request).store)
    lines = commission_lines(snapshot, partner_id=only, currency=currency, kind=kind, status=status, as_of=as_of)
    page = paginate(
        lines,
        sort=sort,
        fields=_SORTS,
        ident=lambda line: line["line_id"],
        limit=limit,
        cursor=cursor,
        filters={
            "partner_id": only,
            "currency": currency,
            "kind": kind,
            "status": status,
            "as_of": as_of.isoformat() if as_of else None,
        },
    )
    return json_response(request, page.to_dict(read.position), position=read.position)


@router.get("/commissions/lines/{line_id}", name="explain_commission_line", response_model=Explanation)
def explain_line(request: Request, line_id: str, principal: Auth, read: Read) -> Response:
    """How a line was computed: the events and plan version that produced it, and the arithmetic."""
    snapshot = LedgerSnapshot.load(services_of(request).store)
    try:
        explanation = ledger_queries.explain(snapshot, line_id)
    except KeyError:
        explanation = None
    if explanation is None or not principal.owns(explanation["partner_id"]):
        raise Problem(404, "not_found", f"unknown commission line {line_id!r}", line_id=line_id)
    return json_response(request, explanation, position=read.position)


@router.get("/commissions/balances", name="commission_balances", response_model=BalancePage)
def balances(
    request: Request,
    principal: Auth,
    read: Read,
    partner_id: PartnerFilter = None,
    currency: CurrencyFilter = None,
    as_of: AsOf = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[str | None, Query(max_length=2000)] = None,
) -> Response:
    """Accrued (held), payable, paid and balance per partner and currency."""
    only = principal.partner_filter(partner_id)
    snapshot = LedgerSnapshot.load(services_of(request).store)
    rows = (
        partner_balances(snapshot, only, currency=currency, as_of=as_of)
        if only is not None
        else all_balances(snapshot, currency=currency, as_of=as_of)
    )
    page = paginate(
        rows,
        sort="partner",
        fields={"partner": lambda r: r["partner_id"]},
        ident=lambda r: f"{r['partner_id']}/{r['currency']}",
        limit=limit,
        cursor=cursor,
        filters={"partner_id": only, "currency": currency, "as_of": as_of.isoformat() if as_of else None},
    )
    return json_response(request, page.to_dict(read.position), position=read.position)


@router.get("/partners/{partner_id}/statement", name="partner_statement", response_model=Statement)
def statement(
    request: Request,
    partner_id: str,
    principal: Auth,
    read: Read,
    currency: Annotated[str, Query(pattern=r"^[A-Z]{3}$")],
    month: Annotated[str, Query(pattern=b.MONTH_PATTERN, description="Booking month, e.g. 2026-03.")],
    as_of: AsOf = None,
) -> Response:
    """The monthly statement (by booking month): opening, accruals, clawbacks, adjustments, payouts, closing."""
    snapshot = LedgerSnapshot.load(services_of(request).store)
    body = ledger_queries.statement(snapshot, partner_id, currency, month, as_of)
    return json_response(request, body, position=read.position)


@router.get("/commissions/discrepancies", name="commission_discrepancies", response_model=DiscrepancyList)
def discrepancies(request: Request, principal: Auth, read: Read, partner_id: PartnerFilter = None) -> Response:
    """What the ledger refused to accept silently (a payout different from the payable balance…)."""
    snapshot = LedgerSnapshot.load(services_of(request).store)
    return json_response(request, {"items": ledger_queries.discrepancies(snapshot, partner_id)}, position=read.position)
