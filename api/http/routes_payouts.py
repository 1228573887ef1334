"""Payouts: pay a partner exactly its payable balance, as the commission ledger has it."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from api.http import bodies as b
from api.http.auth import Auth, authorize
from api.http.commands import command, execute
from api.http.problems import Problem
from api.http.reads import LEDGER, services_of
from domain.clock import now
from projections import ledger_queries

router = APIRouter(prefix="/v1", tags=["payouts"], dependencies=[Depends(authorize)])


@command(router, "/payouts", "record_payout")
def record_payout(request: Request, body: b.PayoutRecording, principal: Auth) -> Response:
    """Pay exactly the partner's payable balance in a currency, as the ledger has it now.

    The ledger must have caught up with every recorded event first (else 504);
    nothing payable, or an ``amount_minor`` different from the payable balance, is a 409.
    """
    services = services_of(request)
    program = services.program
    program.partner(body.partner_id)  # 404 for an unknown partner
    with services.payout_lock:
        head = services.progress.report().head
        report = services.progress.wait_for(head, [LEDGER], services.wait_default)
        if report.reached([LEDGER]) < head:
            raise Problem(
                504,
                "projection_lag",
                f"the commission ledger is at position {report.reached([LEDGER])}, behind {head}:"
                " the payable balance is not known yet; retry",
                reached=report.reached([LEDGER]),
                head=head,
                lag=head - report.reached([LEDGER]),
            )
        at = now()
        payable = ledger_queries.payable_minor(services.store, body.partner_id, body.currency, at)
        if body.amount_minor is not None and body.amount_minor != payable:
            raise Problem(
                409,
                "payable_mismatch",
                f"a payout pays exactly the payable balance: {payable} {body.currency} is payable,"
                f" {body.amount_minor} was asked",
                payable_minor=payable,
            )
        if payable <= 0:
            raise Problem(
                409,
                "nothing_payable",
                f"partner {body.partner_id} has no positive payable balance in {body.currency} ({payable})",
                payable_minor=payable,
            )
        return execute(
            request,
            lambda: program.record_payout(
                payout_id=body.payout_id,
                partner_id=body.partner_id,
                currency=body.currency,
                period=body.period,
                amount_minor=payable,
                payable_minor=payable,
                actor=principal.actor,
                reference=body.reference,
                at=at,
            ),
        )
