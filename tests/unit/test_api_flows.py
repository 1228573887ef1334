"""Commands then queries through the HTTP API (embedded composition): read-your-writes, pagination, ETags."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from tests.unit.api_world import ALPHA, BETA, World, make_world


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield from make_world(tmp_path_factory.mktemp("flows"))


def _this_month() -> str:
    return datetime.now(UTC).strftime("%Y-%m")


def test_command_then_query_with_min_position(world: World) -> None:
    accepted = world.post(
        "/v1/partners",
        {"partner_id": "P-NEW", "name": "Newcomer Ltd", "type": "agent", "region": "SG", "size": "large"},
        who="ops",
    )
    assert accepted["events"] == ["prm.partner.applied.v1"] and accepted["position"] > 0
    response = world.client.get(
        "/v1/partners/P-NEW", params={"min_position": accepted["position"]}, headers=world.headers("auditor")
    )
    assert response.status_code == 200
    assert int(response.headers["x-prm-position"]) >= accepted["position"]
    assert response.json()["status"] == "applied"
    # The embedded projector ran before the 202: the position is already reached.
    assert world.services.progress.report().reached() >= accepted["position"]
    approved = world.post("/v1/partners/P-NEW/approve", {"reason": "good fit"}, who="ops")
    detail = world.get("/v1/partners/P-NEW", min_position=approved["position"])
    assert detail["status"] == "onboarding"
    assert [s["status"] for s in detail["statuses"]] == ["applied", "approved", "onboarding"]


def test_partner_lifecycle_commands(world: World) -> None:
    world.post("/v1/partners/P-NEW/suspend", {"reason": "unpaid invoices"}, who="ops", expect=409)  # not active yet
    world.post("/v1/partners/P-A/suspend", {"reason": "audit"}, who="ops")
    assert world.get("/v1/partners/P-A")["status"] == "suspended"
    world.post("/v1/partners/P-A/reinstate", {"reason": "audit passed"}, who="ops")
    world.post("/v1/partners/P-A/segment", {"size": "medium"}, who="ops")
    world.post(
        "/v1/partners/P-A/certifications",
        {"cert": "CRM-ADMIN", "person": "lan@alpha.vn", "expires_at": "2027-12-31T00:00:00Z"},
        who="ops",
    )
    world.post(
        "/v1/partners/P-A/tier-override",
        {"tier": "gold", "reason": "strategic partner", "effective_at": "2026-04-01T00:00:00Z"},
        who="ops",
    )
    evaluation = world.post(
        "/v1/partners/P-B/tier-evaluations",
        {"quarter_end": "2026-04-01T00:00:00Z", "revenue_minor": 0},
        who="ops",
    )
    assert "qualified" in evaluation["details"]
    detail = world.get("/v1/partners/P-A", min_position=world.services.progress.report().head)
    assert detail["status"] == "active" and detail["size"] == "medium" and detail["tier"] == "gold"
    assert detail["contracts"][0]["contract_id"] == "C-P-A"
    assert detail["registrations"]["won"] == 1


def test_contract_commands_and_reads(world: World) -> None:
    contract = world.get("/v1/contracts/C-P-B")
    assert contract["partner_id"] == BETA and contract["status"] == "signed"
    world.post("/v1/contracts/C-P-B/amend", {"reason": "add VN", "territory": ["TH", "VN"]}, who="ops")
    renewed = world.post("/v1/contracts/C-P-B/renew", {"ends_on": "2027-12-31"}, who="ops")
    assert world.get("/v1/contracts/C-P-B", min_position=renewed["position"])["ends_on"] == "2027-12-31"
    assert world.get(f"/v1/partners/{BETA}/contracts")["items"][0]["contract_id"] == "C-P-B"


def test_registration_flow(world: World) -> None:
    submitted = world.post(
        "/v1/registrations",
        {
            "registration_id": "R-A9",
            "partner_id": ALPHA,
            "customer": {"name": "Saigon Retail JSC", "domain": "saigonretail.vn", "country": "VN"},
            "estimated_value_minor": 80_000_000,
            "currency": "VND",
            "products": ["software", "services"],
            "submitted_at": "2026-05-01T00:00:00Z",
        },
        who="partner_a",
    )
    mine = world.get("/v1/registrations", who="partner_a", status="submitted", min_position=submitted["position"])
    assert [r["registration_id"] for r in mine["items"]] == ["R-A9"]
    assert mine["items"][0]["customer"]["domain"] == "saigonretail.vn"
    world.post("/v1/registrations/R-A9/approve", {"at": "2026-05-02T00:00:00Z"}, who="ops")
    extended = world.post(
        "/v1/registrations/R-A9/extend-protection", {"reason": "long deal", "at": "2026-06-01T00:00:00Z"}, who="ops"
    )
    detail = world.get("/v1/registrations/R-A9", min_position=extended["position"])
    assert detail["status"] == "approved" and detail["protected_until"].startswith("2026-08-30")
    withdrawn = world.post("/v1/registrations/R-A9/withdraw", {"reason": "customer went quiet"}, who="partner_a")
    assert world.get("/v1/registrations/R-A9", min_position=withdrawn["position"])["status"] == "withdrawn"
    rejected = world.post(
        "/v1/registrations",
        {
            "registration_id": "R-B9",
            "partner_id": BETA,
            "customer": {"name": "Chiang Mai Hotels", "country": "TH"},
            "estimated_value_minor": 1,
            "currency": "USD",
            "products": ["hardware"],
            "submitted_at": "2026-05-01T00:00:00Z",
        },
        who="partner_b",
    )
    world.post("/v1/registrations/R-B9/reject", {"reason_code": "insufficient_information"}, who="ops")
    assert world.get("/v1/registrations/R-B9", min_position=rejected["position"] + 1)["status"] == "rejected"
    expired = world.post("/v1/registrations/expire", {"at": "2026-12-01T00:00:00Z"}, who="ops")
    assert {e["business_id"] for e in expired["expired"]} >= {"R-B1"} or expired["expired"] == []


def test_sales_commissions_statement_and_payout(world: World) -> None:
    duplicate = world.post(
        "/v1/sales",
        {
            "sale_id": "S-A1",
            "partner_id": ALPHA,
            "registration_id": "R-A1",
            "customer": {"name": "Minh Phat Trading", "domain": "minhphat.vn", "tax_id": None, "country": "VN"},
            "lines": [
                {
                    "sku": "CRM-PRO-12M",
                    "category": "software",
                    "quantity": 3,
                    "unit_price_minor": 12_000_000,
                    "currency": "VND",
                }
            ],
            "occurred_at": "2026-02-01T10:00:00Z",
        },
        who="service",
    )
    assert duplicate["duplicate"] is True and duplicate["position"] is None
    lines = world.get("/v1/commissions/lines", partner_id=ALPHA, currency="VND")["items"]
    accrual = next(line for line in lines if line["kind"] == "accrual")
    assert accrual["amount_minor"] == 2_520_000  # 36,000,000 x (500 + 200 bonus) bps
    clawback = next(line for line in lines if line["kind"] == "clawback")
    assert clawback["amount_minor"] == -840_000
    explanation = world.get(f"/v1/commissions/lines/{accrual['line_id']}", who="auditor")
    assert "500 + 200 + 0" in explanation["text"] and explanation["source_event_ids"]
    statement = world.get(f"/v1/partners/{ALPHA}/statement", who="partner_a", currency="VND", month=_this_month())
    assert statement["accruals"] == 2_520_000 and statement["clawbacks"] == -840_000
    balance = world.get("/v1/commissions/balances", partner_id=ALPHA, currency="VND")["items"][0]
    assert balance["payable"] == 1_680_000
    paid = world.post(
        "/v1/payouts",
        {"payout_id": "PO-A1", "partner_id": ALPHA, "currency": "VND", "period": "2026-03", "amount_minor": 1_680_000},
    )
    after = world.get("/v1/commissions/balances", partner_id=ALPHA, currency="VND", min_position=paid["position"])
    assert after["items"][0]["payable"] == 0 and after["items"][0]["payouts"] == 1_680_000
    payouts = world.get("/v1/commissions/lines", partner_id=ALPHA, kind="payout")["items"]
    assert [p["amount_minor"] for p in payouts] == [-1_680_000]
    again = {"payout_id": "PO-A2", "partner_id": ALPHA, "currency": "VND", "period": "2026-03"}
    assert world.client.post("/v1/payouts", json=again, headers=world.headers("admin")).status_code == 409
    assert world.get("/v1/commissions/discrepancies")["items"] == []
    sale = world.get("/v1/sales/S-A1", who="service")
    assert sale["total_minor"] == 36_000_000 and sale["refunded_minor"] == 12_000_000
    assert world.get("/v1/opportunities/O-1")["owner"] == "direct.sales@prm.test"


def test_conflicts_list_detail_and_dismiss(world: World) -> None:
    page = world.get("/v1/conflicts")
    kinds = {c["kind"]: c for c in page["items"]}
    assert kinds["partner_vs_partner"]["status"] == "resolved"
    assert kinds["partner_vs_partner"]["partner_ids"] == [ALPHA, BETA]
    direct = world.ids["conflict_direct"]
    detail = world.get(f"/v1/conflicts/{direct}")
    assert detail["conflict"]["kind"] == "direct_vs_partner" and detail["evidence"]["rule"] == "domain"
    dismissed = world.post(f"/v1/conflicts/{direct}/dismiss", {"reason": "our rep withdrew"}, who="ops")
    after = world.get("/v1/conflicts", status="dismissed", min_position=dismissed["position"])
    assert [c["conflict_id"] for c in after["items"]] == [direct]
    assert (
        world.client.post(
            f"/v1/conflicts/{direct}/dismiss", json={"reason": "twice"}, headers=world.headers("ops")
        ).status_code
        == 409
    )


def test_dashboards_with_filters_and_leaderboard(world: World) -> None:
    channel = world.get("/v1/dashboards", who="auditor", period="2026-Q1")
    assert channel["revenue"]["VND"]["gross_minor"] == 36_000_000
    assert channel["revenue"]["VND"]["refunds_minor"] == 12_000_000
    assert channel["direct_revenue"]["VND"]["net_minor"] == 12_000_000
    assert channel["revenue"]["USD"]["net_minor"] == 250_000
    assert channel["commission"]["VND"]["accrued_minor"] == 2_520_000
    assert channel["conflicts"]["partner_vs_partner"]["opened"] in (0, 1)
    distributors = world.get("/v1/dashboards", period="2026-Q1", type="distributor")
    assert distributors["partners"] == [BETA] and "VND" not in distributors["revenue"]
    two = world.get("/v1/dashboards", period="2026-Q1", type=["distributor", "reseller"], region=["VN"])
    assert two["partners"] == [ALPHA]
    kpi = world.get("/v1/dashboards/kpis/win_rate", period="2026-Q1")
    assert kpi["value"]["won"] == 2
    board = world.get("/v1/dashboards/leaderboard", period="2026-Q1", currency="VND")
    assert [row["partner_id"] for row in board["boards"]["VND"]] == [ALPHA]
    assert world.get("/v1/dashboards", period="2026-02")["period"] == "2026-02"
    assert world.get("/v1/dashboards", period="2026")["period"] == "2026"


def test_pagination_with_an_opaque_cursor(world: World) -> None:
    for n in range(7):
        world.post(
            "/v1/partners",
            {"partner_id": f"P-PAGE{n}", "name": f"Page {n}", "type": "referral", "region": "JP", "size": "small"},
            who="ops",
        )
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"type": "referral", "sort": "-partner_id", "limit": 3, **({"cursor": cursor} if cursor else {})}
        page = world.get("/v1/partners", **params)
        assert page["total"] == 7
        seen += [p["partner_id"] for p in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
        base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))  # opaque, but URL-safe
    assert pages == 3
    assert seen == [f"P-PAGE{n}" for n in reversed(range(7))]
    first = world.get("/v1/partners", type="referral", limit=3)
    response = world.client.get(
        "/v1/partners", params={"type": "agent", "cursor": first["next_cursor"]}, headers=world.headers("admin")
    )
    assert response.status_code == 422 and response.json()["code"] == "invalid_cursor"


def test_etag_and_if_none_match(world: World) -> None:
    headers = world.headers("auditor")
    first = world.client.get("/v1/partners/P-B", headers=headers)
    etag = first.headers["etag"]
    assert world.client.get("/v1/partners/P-B", headers=headers).headers["etag"] == etag
    cached = world.client.get("/v1/partners/P-B", headers={**headers, "If-None-Match": etag})
    assert cached.status_code == 304 and cached.content == b"" and cached.headers["etag"] == etag
    world.post("/v1/partners/P-B/segment", {"size": "large"}, who="ops")
    changed = world.client.get("/v1/partners/P-B", headers={**headers, "If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["etag"] != etag


def test_partner_history_from_the_event_store(world: World) -> None:
    history = world.get(f"/v1/partners/{ALPHA}/history", limit=500)
    types = [e["type"] for e in history["items"]]
    assert types[0] == "prm.partner.applied.v1"
    assert "prm.sale.recorded.v1" in types and "prm.payout.recorded.v1" in types
    sequences = [e["sequence"] for e in history["items"]]
    assert sequences == sorted(sequences)
    newest = world.get(f"/v1/partners/{ALPHA}/history", order="desc", limit=2)["items"]
    assert newest[0]["sequence"] == sequences[-1]
    later = world.get(f"/v1/partners/{ALPHA}/history", after=sequences[-2])["items"]
    assert [e["sequence"] for e in later] == sequences[-1:]
    only = world.get(f"/v1/partners/{ALPHA}/history", type="prm.sale.refunded.v1")["items"]
    assert [e["data"]["refund_id"] for e in only] == ["RF-1"]


def test_plans_and_settings(world: World) -> None:
    plans = world.get("/v1/plans")["items"]
    assert [p["plan_id"] for p in plans] == ["STD"]
    version = world.post(
        "/v1/plans/STD/versions",
        {
            "effective_from": "2026-07-01T00:00:00Z",
            "terms": {"tier_rates_bps": {"registered": 600, "silver": 900, "gold": 1100, "platinum": 1300}},
            "reason": "H2 rates",
        },
    )
    assert version["details"]["version"] == 2
    plan = world.get("/v1/plans/STD", min_position=version["position"])
    assert [v["version"] for v in plan["versions"]] == [1, 2]
    recalculation = world.post("/v1/plans/STD/recalculations", {"period": "2026-Q1", "reason": "check"})
    assert sorted(recalculation["details"]["partners"]) == [ALPHA, BETA]
    settings = world.get("/v1/programme/settings", who="ops")["settings"]
    assert settings["protection_days"] == 90
    changed = world.post("/v1/programme/settings", {"changes": {"protection_days": 120}, "reason": "longer deals"})
    assert changed["events"][-1] == "prm.program.settings_changed.v1"
    assert world.get("/v1/programme/settings")["settings"]["protection_days"] == 120


def test_operations_endpoints(world: World) -> None:
    assert world.client.get("/healthz").json() == {"status": "ok"}
    ready = world.client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["read_models"]["ok"] is True
    metrics = world.client.get("/metrics").text
    assert 'prm_projection_lag_events{projection="ledger"} 0.0' in metrics
    assert 'route="/v1/partners/{partner_id}"' in metrics
    assert "prm_http_request_duration_seconds_bucket" in metrics
    assert "prm_relay_lag_events" not in metrics  # no relay in the embedded mode: not made up
    me = world.get("/v1/me", who="partner_a")
    assert me == {"key_id": me["key_id"], "role": "partner", "label": "lead@p-a.example", "partner_id": ALPHA}
