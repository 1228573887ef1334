"""Deal registrations: list and detail (read models), and every registration command."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import Response

from api.http import bodies as b
from api.http.auth import Auth, authorize
from api.http.commands import command, execute, execute_many
from api.http.problems import Problem
from api.http.reads import CONFLICTS, DASHBOARDS, ReadPosition, consistent, json_response, paginate, services_of
from api.http.views import ExpiredRegistrations, RegistrationPage, RegistrationView
from api.readmodels import registration_views

router = APIRouter(prefix="/v1", tags=["registrations"], dependencies=[Depends(authorize)])

RegistrationStatus = Literal["submitted", "approved", "rejected", "won", "lost", "expired", "withdrawn"]
RegistrationSort = Literal[
    "registration_id",
    "-registration_id",
    "submitted_at",
    "-submitted_at",
    "estimated_value_minor",
    "-estimated_value_minor",
    "status",
]
_SORTS = {
    "registration_id": lambda r: r["registration_id"],
    "submitted_at": lambda r: r["submitted_at"],
    "estimated_value_minor": lambda r: r["estimated_value_minor"],
    "status": lambda r: r["status"],
}
_READS = (DASHBOARDS, CONFLICTS)


@router.get("/registrations", name="list_registrations", response_model=RegistrationPage)
def list_registrations(
    request: Request,
    principal: Auth,
    read: Annotated[ReadPosition, Depends(consistent(*_READS))],
    partner_id: Annotated[str | None, Query(max_length=100)] = None,
    status: RegistrationStatus | None = None,
    currency: Annotated[str | None, Query(pattern=r"^[A-Z]{3}$")] = None,
    sort: RegistrationSort = "registration_id",
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=2000)] = None,
) -> Response:
    """Deal registrations; a partner key sees only its own."""
    only = principal.partner_filter(partner_id)
    items = [
        r
        for r in registration_views(services_of(request).store, partner_id=only)
        if (status is None or r["status"] == status) and (currency is None or r["currency"] == currency)
    ]
    page = paginate(
        items,
        sort=sort,
        fields=_SORTS,
        ident=lambda r: r["registration_id"],
        limit=limit,
        cursor=cursor,
        filters={"partner_id": only, "status": status, "currency": currency},
    )
    return json_response(request, page.to_dict(read.position), position=read.position)


@router.get("/registrations/{registration_id}", name="get_registration", response_model=RegistrationView)
def get_registration(
    request: Request,
    registration_id: str,
    principal: Auth,
    read: Annotated[ReadPosition, Depends(consistent(*_READS))],
) -> Response:
    found = registration_views(services_of(request).store, registration_id=registration_id)
    if not found or not principal.owns(found[0]["partner_id"]):
        raise Problem(404, "not_found", f"unknown registration {registration_id!r}", registration_id=registration_id)
    return json_response(request, found[0], position=read.position)


def _owned(request: Request, registration_id: str, principal: Auth) -> None:
    """A partner key acts only on its own registrations (another partner's is answered as unknown)."""
    if principal.is_partner:
        program = services_of(request).program
        try:
            owner = program.registration(registration_id).partner_id
        except ValueError:  # not a possible registration id
            owner = None
        if not principal.owns(owner):
            raise Problem(404, "not_found", f"unknown registration {registration_id!r}")


@command(router, "/registrations", "submit_registration")
def submit_registration(request: Request, body: b.RegistrationSubmission, principal: Auth) -> Response:
    """Register a deal (first to register wins; a later match by another partner carries a conflict)."""
    principal.require_own(body.partner_id)
    program = services_of(request).program
    return execute(
        request,
        lambda: program.submit_registration(
            registration_id=body.registration_id,
            partner_id=body.partner_id,
            customer=body.customer.model_dump(),
            estimated_value_minor=body.estimated_value_minor,
            currency=body.currency,
            products=list(body.products),
            actor=principal.actor,
            expected_close_on=body.expected_close_on,
            submitted_at=body.submitted_at,
        ),
    )


@command(router, "/registrations/{registration_id}/approve", "approve_registration")
def approve_registration(request: Request, registration_id: str, body: b.Step, principal: Auth) -> Response:
    program = services_of(request).program
    return execute(request, lambda: program.approve_registration(registration_id, actor=principal.actor, at=body.at))


@command(router, "/registrations/{registration_id}/reject", "reject_registration")
def reject_registration(
    request: Request, registration_id: str, body: b.RegistrationRejection, principal: Auth
) -> Response:
    program = services_of(request).program
    return execute(
        request,
        lambda: program.reject_registration(
            registration_id, actor=principal.actor, reason_code=body.reason_code, reason=body.reason, at=body.at
        ),
    )


@command(router, "/registrations/{registration_id}/extend-protection", "extend_protection")
def extend_protection(request: Request, registration_id: str, body: b.RequiredReason, principal: Auth) -> Response:
    program = services_of(request).program
    return execute(
        request,
        lambda: program.extend_protection(registration_id, actor=principal.actor, reason=body.reason, at=body.at),
    )


@command(router, "/registrations/{registration_id}/lost", "mark_registration_lost")
def mark_registration_lost(request: Request, registration_id: str, body: b.RequiredReason, principal: Auth) -> Response:
    program = services_of(request).program
    return execute(
        request,
        lambda: program.mark_registration_lost(registration_id, actor=principal.actor, reason=body.reason, at=body.at),
    )


@command(router, "/registrations/{registration_id}/withdraw", "withdraw_registration")
def withdraw_registration(request: Request, registration_id: str, body: b.OptionalReason, principal: Auth) -> Response:
    """Withdraw a submitted or approved registration (a partner key: only its own)."""
    _owned(request, registration_id, principal)
    program = services_of(request).program
    return execute(
        request,
        lambda: program.withdraw_registration(registration_id, actor=principal.actor, reason=body.reason, at=body.at),
    )


@router.post(
    "/registrations/expire",
    name="expire_registrations",
    status_code=202,
    response_model=ExpiredRegistrations,
)
def expire_registrations(request: Request, body: b.Step, principal: Auth) -> Response:
    """Expire every approved registration whose protection has ended by ``at`` (default now)."""
    program = services_of(request).program
    return execute_many(request, lambda: program.expire_registrations(at=body.at))
