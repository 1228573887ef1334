"""What internal services publish: sales, refunds, direct opportunities (the HTTP twin of ``prm.sales.v1``).

The bodies are the ``data`` of the CloudEvents on the wire; the key's label is
the ``source``, and an optional ``Idempotency-Key`` header plays the part of the
CloudEvents ``id``. A sale sent again with the same data is answered as a
duplicate (202, ``duplicate: true``, no new position); with different data it
is refused (409). A service reads back only what it published itself.
"""

from __future__ import annotations

from typing import Annotated

from eventsourcing.application import AggregateNotFoundError
from fastapi import APIRouter, Depends, Header, Request
from starlette.responses import Response

from api.http import bodies as b
from api.http.auth import Auth, Principal, authorize
from api.http.commands import command, execute
from api.http.keys import SERVICE
from api.http.reads import ReadPosition, consistent, json_response, services_of
from api.http.views import OpportunityView, SaleView
from domain.base import PrmAggregate
from domain.errors import NotFound
from domain.sale import Opportunity, Sale
from projections.envelope import iso

router = APIRouter(prefix="/v1", tags=["sales"], dependencies=[Depends(authorize)])

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=200,
        pattern=r"^[\x21-\x7e]+$",
        description="The message id (CloudEvents id) of this submission; a retry with the same key is a no-op.",
    ),
]


def _source(principal: Principal) -> str:
    """The ``source`` recorded with what a key publishes: a service's label, ``api/<label>`` otherwise."""
    return principal.actor if principal.role == SERVICE else f"api/{principal.actor}"


@command(router, "/sales", "record_sale")
def record_sale(
    request: Request, body: b.SaleRecording, principal: Auth, idempotency_key: IdempotencyKey = None
) -> Response:
    """Record a sale (partner or direct). Identical re-sends are duplicates; different data is refused."""
    program = services_of(request).program
    return execute(
        request,
        lambda: program.record_sale(
            sale_id=body.sale_id,
            partner_id=body.partner_id,
            registration_id=body.registration_id,
            customer=body.customer.model_dump(),
            lines=[line.model_dump() for line in body.lines],
            occurred_at=body.occurred_at,
            source=_source(principal),
            message_id=idempotency_key,
        ),
    )


@command(router, "/sales/{sale_id}/refunds", "refund_sale")
def refund_sale(
    request: Request,
    sale_id: str,
    body: b.RefundRecording,
    principal: Auth,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Refund part or all of a sale (cumulative refunds never above the sale)."""
    program = services_of(request).program
    return execute(
        request,
        lambda: program.refund_sale(
            sale_id=sale_id,
            refund_id=body.refund_id,
            amount_minor=body.amount_minor,
            currency=body.currency,
            occurred_at=body.occurred_at,
            reason=body.reason,
            source=_source(principal),
            message_id=idempotency_key,
        ),
    )


@command(router, "/opportunities", "open_opportunity")
def open_opportunity(
    request: Request, body: b.OpportunityOpening, principal: Auth, idempotency_key: IdempotencyKey = None
) -> Response:
    """Our own sales team opened an opportunity (a partner protecting the account gets a conflict)."""
    program = services_of(request).program
    return execute(
        request,
        lambda: program.open_opportunity(
            opportunity_id=body.opportunity_id,
            owner=body.owner,
            customer=body.customer.model_dump(),
            estimated_value_minor=body.estimated_value_minor,
            currency=body.currency,
            opened_at=body.opened_at,
            source=_source(principal),
            message_id=idempotency_key,
        ),
    )


def _visible(principal: Principal, aggregate: PrmAggregate, source: str) -> None:
    if principal.role == SERVICE and source != principal.actor:
        raise NotFound(f"unknown {aggregate.KIND} {aggregate.business_id!r}")


@router.get("/sales/{sale_id}", name="get_sale", response_model=SaleView)
def get_sale(
    request: Request, sale_id: str, principal: Auth, read: Annotated[ReadPosition, Depends(consistent())]
) -> Response:
    """A recorded sale as the event store has it (a service sees only the sales it published)."""
    try:
        sale: Sale = services_of(request).program.sale(sale_id)
    except ValueError:  # not a possible sale id
        raise NotFound(f"unknown sale {sale_id!r}", sale_id=sale_id) from None
    _visible(principal, sale, sale.source)
    body = {
        "sale_id": sale.sale_id,
        "partner_id": sale.partner_id,
        "registration_id": sale.registration_id,
        "source": sale.source,
        "currency": sale.currency,
        "total_minor": sale.total_minor,
        "refunded_minor": sale.refunded_minor,
        "occurred_at": iso(sale.occurred_at),
        "flags": list(sale.flags),
        "lines": sale.lines,
        "customer": sale.customer,
        "refunds": sorted(sale.refunds),
    }
    return json_response(request, body, position=read.position)


@router.get("/opportunities/{opportunity_id}", name="get_opportunity", response_model=OpportunityView)
def get_opportunity(
    request: Request, opportunity_id: str, principal: Auth, read: Annotated[ReadPosition, Depends(consistent())]
) -> Response:
    program = services_of(request).program
    found: PrmAggregate | None
    try:
        found = program.repository.get(Opportunity.id_for(opportunity_id))
    except (AggregateNotFoundError, ValueError):
        found = None
    if not isinstance(found, Opportunity):
        raise NotFound(f"unknown opportunity {opportunity_id!r}", opportunity_id=opportunity_id)
    _visible(principal, found, found.source)
    body = {
        "opportunity_id": found.opportunity_id,
        "owner": found.owner,
        "currency": found.currency,
        "estimated_value_minor": found.estimated_value_minor,
        "opened_at": iso(found.opened_at),
        "source": found.source,
        "customer": found.customer,
    }
    return json_response(request, body, position=read.position)
