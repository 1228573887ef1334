"""Small builders shared by the integration and end-to-end tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime

from consumers.topics import TopicDefaults, TopicNames, admin_client, delete_topics, ensure_topics
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


@contextmanager
def event_topics(kafka_bootstrap: str, label: str) -> Iterator[TopicNames]:
    """``prm.events.v1`` and ``prm.program.v1`` under a prefix unique to one test; deleted afterwards."""
    defaults = TopicDefaults(prefix=f"{label}-{uuid.uuid4().hex[:10]}.")
    names = defaults.names
    admin = admin_client(kafka_bootstrap, client_id=f"prm-test-{label}")
    try:
        report = ensure_topics(admin, [s for s in defaults.specs() if s.name in (names.events, names.program)])
        assert not report.unresolved_drift
        yield names
    finally:
        delete_topics(admin, names.all())
        admin.close()
