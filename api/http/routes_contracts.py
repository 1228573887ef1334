"""Contracts: read from the ledger's read model; sign, amend, renew, terminate, expire."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from api.http import bodies as b
from api.http.auth import Auth, authorize
from api.http.commands import command, execute
from api.http.problems import Problem
from api.http.reads import LEDGER, ReadPosition, consistent, json_response, services_of
from api.http.views import ContractView
from api.readmodels import find_contract

router = APIRouter(prefix="/v1", tags=["contracts"], dependencies=[Depends(authorize)])


@router.get("/contracts/{contract_id}", name="get_contract", response_model=ContractView)
def get_contract(
    request: Request, contract_id: str, principal: Auth, read: Annotated[ReadPosition, Depends(consistent(LEDGER))]
) -> Response:
    contract = find_contract(services_of(request).store, contract_id)
    if contract is None:
        raise Problem(404, "not_found", f"unknown contract {contract_id!r}", contract_id=contract_id)
    return json_response(request, contract, position=read.position)


@command(router, "/contracts", "sign_contract")
def sign_contract(request: Request, body: b.ContractSigning, principal: Auth) -> Response:
    """Sign a contract with a partner (onboarding completes when the training is done too)."""
    program = services_of(request).program
    return execute(
        request,
        lambda: program.sign_contract(
            contract_id=body.contract_id,
            partner_id=body.partner_id,
            starts_on=body.starts_on,
            ends_on=body.ends_on,
            auto_renew=body.auto_renew,
            territory=list(body.territory),
            terms=body.terms,
            commission_plan_id=body.commission_plan_id,
            actor=principal.actor,
            at=body.at,
        ),
    )


@command(router, "/contracts/{contract_id}/amend", "amend_contract")
def amend_contract(request: Request, contract_id: str, body: b.ContractAmendment, principal: Auth) -> Response:
    program = services_of(request).program
    return execute(
        request,
        lambda: program.amend_contract(
            contract_id,
            actor=principal.actor,
            reason=body.reason,
            terms=body.terms,
            territory=list(body.territory) if body.territory is not None else None,
            commission_plan_id=body.commission_plan_id,
            at=body.at,
        ),
    )


@command(router, "/contracts/{contract_id}/renew", "renew_contract")
def renew_contract(request: Request, contract_id: str, body: b.ContractRenewal, principal: Auth) -> Response:
    program = services_of(request).program
    return execute(
        request, lambda: program.renew_contract(contract_id, actor=principal.actor, ends_on=body.ends_on, at=body.at)
    )


@command(router, "/contracts/{contract_id}/terminate", "terminate_contract")
def terminate_contract(request: Request, contract_id: str, body: b.ContractTermination, principal: Auth) -> Response:
    program = services_of(request).program
    return execute(
        request,
        lambda: program.terminate_contract(
            contract_id, actor=principal.actor, reason=body.reason, effective_on=body.effective_on, at=body.at
        ),
    )


@command(router, "/contracts/{contract_id}/expire", "expire_contract")
def expire_contract(request: Request, contract_id: str, body: b.Step, principal: Auth) -> Response:
    program = services_of(request).program
    return execute(request, lambda: program.expire_contract(contract_id, actor=principal.actor, at=body.at))
