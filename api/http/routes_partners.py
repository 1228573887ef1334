"""Partners: the directory (read models), the history timeline (event store) and lifecycle commands."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import Response

from api.http import bodies as b
from api.http.auth import Auth, Principal, authorize
from api.http.commands import command, execute
from api.http.problems import Problem
from api.http.reads import DASHBOARDS, LEDGER, ReadPosition, consistent, json_response, paginate, services_of
from api.http.views import ContractList, HistoryPage, Me, PartnerDetail, PartnerPage
from api.readmodels import partner_contracts, partner_detail, partner_summaries
from projections.envelope import EventEnvelope, iso

router = APIRouter(prefix="/v1", tags=["partners"], dependencies=[Depends(authorize)])

PartnerStatus = Literal["applied", "approved", "rejected", "onboarding", "active", "suspended", "terminated"]
PartnerSort = Literal["partner_id", "-partner_id", "name", "-name", "applied_at", "-applied_at", "status", "tier"]
Limit = Annotated[int, Query(ge=1, le=500, description="Page size.")]
Cursor = Annotated[str | None, Query(max_length=2000, description="next_cursor of the previous page.")]
PartnerId = Annotated[str, Query(max_length=100)]

_SORTS = {
    "partner_id": lambda p: p["partner_id"],
    "name": lambda p: (p["name"] or "").casefold(),
    "applied_at": lambda p: p["applied_at"],
    "status": lambda p: p["status"],
    "tier": lambda p: p["tier"],
}


@router.get("/me", name="whoami", response_model=Me, tags=["keys"])
def whoami(principal: Auth) -> dict[str, Any]:
    """The API key in use: its role, label and (partner keys) partner."""
    key = principal.key
    return {"key_id": key.key_id, "role": key.role, "label": key.label, "partner_id": key.partner_id}


@router.get("/partners", name="list_partners", response_model=PartnerPage)
def list_partners(
    request: Request,
    principal: Auth,
    read: Annotated[ReadPosition, Depends(consistent(DASHBOARDS))],
    status: PartnerStatus | None = None,
    type: b.PartnerType | None = None,
    tier: b.Tier | None = None,
    region: Annotated[str | None, Query(pattern=r"^[A-Z]{2}$")] = None,
    q: Annotated[str | None, Query(max_length=100, description="Part of the partner's name.")] = None,
    partner_id: PartnerId | None = None,
    sort: PartnerSort = "partner_id",
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Response:
    """Partners from the dashboards read model, filtered, sorted and paginated."""
    only = principal.partner_filter(partner_id)
    needle = q.casefold() if q else None
    partners = [
        p
        for p in partner_summaries(services_of(request).store)
        if (only is None or p["partner_id"] == only)
        and (status is None or p["status"] == status)
        and (type is None or p["type"] == type)
        and (tier is None or p["tier"] == tier)
        and (region is None or p["region"] == region)
        and (needle is None or needle in (p["name"] or "").casefold())
    ]
    filters = {"status": status, "type": type, "tier": tier, "region": region, "q": q, "partner_id": only}
    page = paginate(
        partners,
        sort=sort,
        fields=_SORTS,
        ident=lambda p: p["partner_id"],
        limit=limit,
        cursor=cursor,
        filters=filters,
    )
    return json_response(request, page.to_dict(read.position), position=read.position)


@router.get("/partners/{partner_id}", name="get_partner", response_model=PartnerDetail)
def get_partner(
    request: Request,
    partner_id: str,
    principal: Auth,
    read: Annotated[ReadPosition, Depends(consistent(DASHBOARDS, LEDGER))],
) -> Response:
    """One partner: segment, tier, status and their timelines, contracts, balances, registration counts."""
    detail = partner_detail(services_of(request).store, partner_id)
    if detail is None:
        raise Problem(404, "unknown_partner", f"unknown partner {partner_id!r}", partner_id=partner_id)
    return json_response(request, detail, position=read.position)


@router.get("/partners/{partner_id}/contracts", name="partner_contracts", response_model=ContractList)
def get_partner_contracts(
    request: Request, partner_id: str, principal: Auth, read: Annotated[ReadPosition, Depends(consistent(LEDGER))]
) -> Response:
    """The partner's contracts, from the commission ledger's read model."""
    return json_response(
        request, {"items": partner_contracts(services_of(request).store, partner_id)}, position=read.position
    )


def _redacted(event: EventEnvelope, principal: Principal) -> dict[str, Any]:
    """A partner key sees its own events without the other parties' details."""
    data = dict(event.data)
    if principal.is_partner:
        if "conflicts_with" in data:
            data["conflicts_with"] = [{"conflict_id": c.get("conflict_id")} for c in data["conflicts_with"] or []]
        if "winner" in data and data["winner"] not in (event.subject, principal.partner_id):
            data["winner"] = "another party"
    return data


@router.get("/partners/{partner_id}/history", name="partner_history", response_model=HistoryPage)
def partner_history(
    request: Request,
    partner_id: str,
    principal: Auth,
    read: Annotated[ReadPosition, Depends(consistent())],
    after: Annotated[int | None, Query(ge=0, le=2**53, description="Only events after this position.")] = None,
    type: Annotated[str | None, Query(max_length=100, description="Only this CloudEvents type.")] = None,
    order: Literal["asc", "desc"] = "asc",
    limit: Limit = 100,
    cursor: Cursor = None,
) -> Response:
    """Every recorded event that concerns the partner, from the event store, in position order."""
    history = services_of(request).history
    history.catch_up()
    entries = [
        {
            "sequence": e.sequence,
            "id": e.id,
            "type": e.type,
            "subject": e.subject,
            "recorded_at": iso(e.time),
            "data": _redacted(e, principal),
        }
        for e in history.of(partner_id)
        if (after is None or e.sequence > after) and (type is None or e.type == type)
    ]
    page = paginate(
        entries,
        sort="sequence" if order == "asc" else "-sequence",
        fields={"sequence": lambda e: e["sequence"]},
        ident=lambda e: e["id"],
        limit=limit,
        cursor=cursor,
        filters={"partner_id": partner_id, "after": after, "type": type},
    )
    return json_response(request, page.to_dict(read.position), position=read.position)


# ---------------------------------------------------------------- commands


@command(router, "/partners", "apply_partner")
def apply_partner(request: Request, body: b.PartnerApplication, principal: Auth) -> Response:
    """A new partner applies to join the programme."""
    program = services_of(request).program
    return execute(
        request,
        lambda: program.apply_partner(
            partner_id=body.partner_id,
            name=body.name,
            type=body.type,
            region=body.region,
            size=body.size,
            subregion=body.subregion,
            contact_email=body.contact_email,
            actor=principal.actor,
            at=body.at,
        ),
    )


@command(router, "/partners/{partner_id}/approve", "approve_partner")
def approve_partner(request: Request, partner_id: str, body: b.OptionalReason, principal: Auth) -> Response:
    program = services_of(request).program
    return execute(
        request, lambda: program.approve_partner(partner_id, actor=principal.actor, reason=body.reason, at=body.at)
    )


@command(router, "/partners/{partner_id}/reject", "reject_partner")
def reject_partner(request: Request, partner_id: str, body: b.RequiredReason, principal: Auth) -> Response:
    program = services_of(request).program
    return execute(
        request, lambda: program.reject_partner(partner_id, actor=principal.actor, reason=body.reason, at=body.at)
    )


@command(router, "/partners/{partner_id}/suspend", "suspend_partner")
def suspend_partner(request: Request, partner_id: str, body: b.RequiredReason, principal: Auth) -> Response:
    program = services_of(request).program
    return execute(
        request, lambda: program.suspend_partner(partner_id, actor=principal.actor, reason=body.reason, at=body.at)
    )


@command(router, "/partners/{partner_id}/reinstate", "reinstate_partner")
def reinstate_partner(request: Request, partner_id: str, body: b.OptionalReason, principal: Auth) -> Response:
    program = services_of(request).program
    return execute(
        request, lambda: program.reinstate_partner(partner_id, actor=principal.actor, reason=body.reason, at=body.at)
    )


@command(router, "/partners/{partner_id}/terminate", "terminate_partner")
def terminate_partner(request: Request, partner_id: str, body: b.RequiredReason, principal: Auth) -> Response:
    program = services_of(request).program
    return execute(
        request, lambda: program.terminate_partner(partner_id, actor=principal.actor, reason=body.reason, at=body.at)
    )


@command(router, "/partners/{partner_id}/segment", "change_segment")
def change_segment(request: Request, partner_id: str, body: b.SegmentChange, principal: Auth) -> Response:
    program = services_of(request).program
    return execute(
        request,
        lambda: program.change_segment(
            partner_id,
            actor=principal.actor,
            type=body.type,
            region=body.region,
            subregion=body.subregion,
            size=body.size,
            at=body.at,
        ),
    )


@command(router, "/partners/{partner_id}/tier-override", "override_tier")
def override_tier(request: Request, partner_id: str, body: b.TierOverride, principal: Auth) -> Response:
    program = services_of(request).program
    return execute(
        request,
        lambda: program.override_tier(
            partner_id, tier=body.tier, actor=principal.actor, reason=body.reason, effective_at=body.effective_at
        ),
    )


@command(router, "/partners/{partner_id}/tier-evaluations", "evaluate_tier")
def evaluate_tier(request: Request, partner_id: str, body: b.TierEvaluation, principal: Auth) -> Response:
    program = services_of(request).program
    return execute(
        request,
        lambda: program.evaluate_tier(
            partner_id,
            quarter_end=body.quarter_end,
            revenue_minor=body.revenue_minor,
            actor=principal.actor,
            at=body.at,
        ),
    )


@command(router, "/partners/{partner_id}/trainings", "record_training")
def record_training(request: Request, partner_id: str, body: b.Training, principal: Auth) -> Response:
    program = services_of(request).program
    return execute(
        request,
        lambda: program.record_training(
            partner_id, course=body.course, person=body.person, actor=principal.actor, at=body.at
        ),
    )


@command(router, "/partners/{partner_id}/certifications", "grant_certification")
def grant_certification(request: Request, partner_id: str, body: b.Certification, principal: Auth) -> Response:
    program = services_of(request).program
    return execute(
        request,
        lambda: program.grant_certification(
            partner_id,
            cert=body.cert,
            person=body.person,
            actor=principal.actor,
            expires_at=body.expires_at,
            granted_at=body.granted_at,
        ),
    )
