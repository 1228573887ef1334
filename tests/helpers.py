"""Small builders shared by the tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from typing import Any

import psycopg
from psycopg import sql

from consumers.topics import TopicDefaults, TopicNames, admin_client, delete_topics, ensure_topics
from domain.application import PartnerProgram
from projections.envelope import EventEnvelope
from projections.port import ReadView


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


def sale_envelope(sequence: int, partner: str = "P-1", amount: int = 10) -> EventEnvelope:
    """A minimal recorded-sale envelope at ``sequence`` (for reducers such as :class:`Totals`)."""
    return EventEnvelope(
        id=f"e-{sequence}",
        type="prm.sale.recorded.v1",
        subject=f"S-{sequence}",
        sequence=sequence,
        aggregate_id=f"a-{sequence}",
        aggregate_version=1,
        partner_id=partner,
        time=datetime(2026, 1, 1, tzinfo=UTC),
        data={"total_minor": amount},
    )


class Totals:
    """A tiny reducer: revenue and number of sales per partner."""

    name = "totals"

    def handles(self, event: EventEnvelope) -> bool:
        return event.type == "prm.sale.recorded.v1"

    def apply(self, event: EventEnvelope, view: ReadView) -> None:
        key = event.partner_id or "direct"
        doc = view.get("partner", key) or {"revenue": 0, "sales": 0}
        doc["revenue"] += event.data["total_minor"]
        doc["sales"] += 1
        view.put("partner", key, doc)


def checkpoint_offsets(conn: psycopg.Connection[Any], schema: str) -> dict[str, dict[str, int]]:
    """Read-model checkpoints in ``schema``: projection -> source -> highest offset applied ({} before any)."""
    exists = conn.execute("SELECT to_regclass(%s)", (f'"{schema}".rm_checkpoints',)).fetchone()
    if not exists or exists[0] is None:
        return {}
    rows = conn.execute(
        sql.SQL('SELECT projection, source, "offset" FROM {} WHERE "offset" IS NOT NULL').format(
            sql.Identifier(schema, "rm_checkpoints")
        )
    ).fetchall()
    out: dict[str, dict[str, int]] = {}
    for projection, source, offset in rows:
        out.setdefault(projection, {})[source] = offset
    return out
