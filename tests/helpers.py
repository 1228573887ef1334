"""Small builders shared by the integration and end-to-end tests."""

from __future__ import annotations

from datetime import date, datetime

from domain.application import PartnerProgram


def onboard_partner(
    program: PartnerProgram,
    partner_id: str,
    at: datetime,
    *,
    plan_id: str = "STD",
    person: str = "lan@example.vn",
) -> None:
    """Apply, approve, sign a 2026 contract on ``plan_id`` and complete onboarding: the partner ends ``active``."""
    program.apply_partner(
        partner_id=partner_id,
        name=f"Partner {partner_id}",
        type="reseller",
        region="VN",
        size="small",
        actor="portal",
        at=at,
    )
    program.approve_partner(partner_id, actor="channel-manager", at=at)
    program.sign_contract(
        contract_id=f"K-{partner_id}",
        partner_id=partner_id,
        starts_on=date(2026, 1, 1),
        ends_on=date(2026, 12, 31),
        auto_renew=False,
        territory=["VN"],
        terms="standard reseller terms",
        commission_plan_id=plan_id,
        actor="legal",
        at=at,
    )
    program.record_training(partner_id, course="partner-onboarding", person=person, actor="lms", at=at)
