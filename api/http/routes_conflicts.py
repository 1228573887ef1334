"""Channel conflicts: list and detail (the conflicts read model), resolve and dismiss (registration commands).

A decision names a conflict by its id; the registrations it concerns come from
the read model, so wait for the detection (``?min_position=`` on the detail, or
the position of the command that caused it) before deciding a fresh conflict.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import Response

from api.http import bodies as b
from api.http.auth import Auth, authorize
from api.http.commands import command, execute
from api.http.problems import Problem
from api.http.reads import CONFLICTS, ReadPosition, consistent, json_response, paginate, services_of
from api.http.views import ConflictDetail, ConflictPage
from domain.conflicts import PARTNER_VS_PARTNER
from projections.conflict_queries import conflict_detail, find_conflict, list_conflicts, load_conflicts

router = APIRouter(prefix="/v1", tags=["conflicts"], dependencies=[Depends(authorize)])

ConflictKind = Literal["partner_vs_partner", "direct_vs_partner", "sale_outside_registration"]
ConflictStatus = Literal["open", "resolved", "dismissed"]
ConflictSort = Literal["sequence", "-sequence", "detected_at", "-detected_at", "kind"]
_SORTS = {
    "sequence": lambda c: c["sequence"],
    "detected_at": lambda c: c["detected_at"],
    "kind": lambda c: c["kind"],
}


@router.get("/conflicts", name="list_conflicts", response_model=ConflictPage)
def get_conflicts(
    request: Request,
    principal: Auth,
    read: Annotated[ReadPosition, Depends(consistent(CONFLICTS))],
    kind: ConflictKind | None = None,
    status: ConflictStatus | None = None,
    partner_id: Annotated[str | None, Query(max_length=100)] = None,
    sort: ConflictSort = "sequence",
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=2000)] = None,
) -> Response:
    """Conflicts with their evidence and status, in detection order by default."""
    found = list_conflicts(load_conflicts(services_of(request).store), kind=kind, status=status, partner_id=partner_id)
    page = paginate(
        found,
        sort=sort,
        fields=_SORTS,
        ident=lambda c: c["conflict_id"],
        limit=limit,
        cursor=cursor,
        filters={"kind": kind, "status": status, "partner_id": partner_id},
    )
    return json_response(request, page.to_dict(read.position), position=read.position)


@router.get("/conflicts/{conflict_id}", name="get_conflict", response_model=ConflictDetail)
def get_conflict(
    request: Request, conflict_id: str, principal: Auth, read: Annotated[ReadPosition, Depends(consistent(CONFLICTS))]
) -> Response:
    """One conflict, its evidence and each party's status now (``moot``: a party has closed since)."""
    detail = conflict_detail(services_of(request).store, conflict_id)
    if detail is None:
        raise Problem(404, "not_found", f"unknown conflict {conflict_id!r}", conflict_id=conflict_id)
    return json_response(request, detail, position=read.position)


def _conflict(request: Request, conflict_id: str) -> dict[str, Any]:
    found = find_conflict(load_conflicts(services_of(request).store), conflict_id)
    if found is None:
        raise Problem(
            404,
            "not_found",
            f"unknown conflict {conflict_id!r} (if it was just detected, retry once the read model has it)",
            conflict_id=conflict_id,
        )
    return found


@command(router, "/conflicts/{conflict_id}/resolve", "resolve_conflict")
def resolve_conflict(request: Request, conflict_id: str, body: b.ConflictResolution, principal: Auth) -> Response:
    """Decide a conflict: each registration involved records the decision (the loser loses protection)."""
    conflict = _conflict(request, conflict_id)
    registrations = conflict["registration_ids"]
    other = registrations[1] if conflict["kind"] == PARTNER_VS_PARTNER and len(registrations) > 1 else None
    program = services_of(request).program
    return execute(
        request,
        lambda: program.resolve_conflict(
            conflict_id=conflict["conflict_id"],
            kind=conflict["kind"],
            registration_id=registrations[0],
            other_registration_id=other,
            winner=body.winner,
            actor=principal.actor,
            reason=body.reason,
            at=body.at,
        ),
    )


@command(router, "/conflicts/{conflict_id}/dismiss", "dismiss_conflict")
def dismiss_conflict(request: Request, conflict_id: str, body: b.ConflictDismissal, principal: Auth) -> Response:
    """Dismiss a conflict (no decision needed); it is recorded on the registration it blocks."""
    conflict = _conflict(request, conflict_id)
    program = services_of(request).program
    return execute(
        request,
        lambda: program.dismiss_conflict(
            conflict_id=conflict["conflict_id"],
            kind=conflict["kind"],
            registration_id=conflict["registration_ids"][-1],
            actor=principal.actor,
            reason=body.reason,
            at=body.at,
        ),
    )
