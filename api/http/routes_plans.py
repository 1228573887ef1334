"""Commission plans: read from the ledger's read model; create, publish versions, request recalculations."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import Response

from api.http import bodies as b
from api.http.auth import Auth, authorize
from api.http.commands import command, execute
from api.http.problems import Problem
from api.http.reads import LEDGER, ReadPosition, consistent, json_response, paginate, services_of
from api.http.views import PlanPage, PlanView
from api.readmodels import plans

router = APIRouter(prefix="/v1", tags=["plans"], dependencies=[Depends(authorize)])


@router.get("/plans", name="list_plans", response_model=PlanPage)
def list_plans(
    request: Request,
    principal: Auth,
    read: Annotated[ReadPosition, Depends(consistent(LEDGER))],
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=2000)] = None,
) -> Response:
    page = paginate(
        plans(services_of(request).store),
        sort="plan_id",
        fields={"plan_id": lambda p: p["plan_id"]},
        ident=lambda p: p["plan_id"],
        limit=limit,
        cursor=cursor,
        filters={},
    )
    return json_response(request, page.to_dict(read.position), position=read.position)


@router.get("/plans/{plan_id}", name="get_plan", response_model=PlanView)
def get_plan(
    request: Request, plan_id: str, principal: Auth, read: Annotated[ReadPosition, Depends(consistent(LEDGER))]
) -> Response:
    """A plan and its versions (terms, effective time, the position each was recorded at)."""
    found = [p for p in plans(services_of(request).store) if p["plan_id"] == plan_id]
    if not found:
        raise Problem(404, "not_found", f"unknown commission plan {plan_id!r}", plan_id=plan_id)
    return json_response(request, found[0], position=read.position)


@command(router, "/plans", "create_plan")
def create_plan(request: Request, body: b.PlanCreation, principal: Auth) -> Response:
    program = services_of(request).program
    return execute(
        request, lambda: program.create_plan(plan_id=body.plan_id, name=body.name, actor=principal.actor, at=body.at)
    )


@command(router, "/plans/{plan_id}/versions", "publish_plan_version")
def publish_plan_version(request: Request, plan_id: str, body: b.PlanVersion, principal: Auth) -> Response:
    """Publish a new version; it never rewrites existing lines (request a recalculation for that)."""
    program = services_of(request).program
    return execute(
        request,
        lambda: program.publish_plan_version(
            plan_id,
            effective_from=body.effective_from,
            terms=body.terms.to_terms(),
            actor=principal.actor,
            reason=body.reason,
            at=body.at,
        ),
    )


@command(router, "/plans/{plan_id}/recalculations", "request_recalculation")
def request_recalculation(request: Request, plan_id: str, body: b.RecalculationRequest, principal: Auth) -> Response:
    """Adjustment lines for a period, for every partner with a contract on the plan."""
    program = services_of(request).program
    return execute(
        request,
        lambda: program.request_recalculation(
            plan_id, period=body.period, actor=principal.actor, reason=body.reason, at=body.at
        ),
    )
