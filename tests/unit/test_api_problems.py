"""One error format: every kind of error is an RFC 9457 problem (application/problem+json)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from api.http import routes_partners
from api.progress import ProgressReport
from tests.unit.api_world import ALPHA, MINH_PHAT, World, make_world


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield from make_world(tmp_path_factory.mktemp("problems"))


def assert_problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    body: dict[str, Any] = response.json()
    assert body["type"] == f"https://prm.dev/problems/{code}", body
    assert body["status"] == status
    assert body["code"] == code
    assert body["title"] and body["detail"]
    assert body["instance"] == response.request.url.path
    assert body["request_id"] == response.headers["x-request-id"]
    return body


def test_401_without_or_with_a_bad_key(world: World) -> None:
    response = world.client.get("/v1/partners")
    assert_problem(response, 401, "unauthenticated")
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert_problem(
        world.client.get("/v1/partners", headers={"X-API-Key": "prm_0123456789abcdef_" + "x" * 43}),
        401,
        "invalid_api_key",
    )
    assert_problem(
        world.client.get("/v1/partners", headers={"Authorization": "Bearer nonsense"}), 401, "invalid_api_key"
    )


def test_403_for_a_role_that_may_not(world: World) -> None:
    response = world.client.post("/v1/partners", json={}, headers=world.headers("auditor"))
    body = assert_problem(response, 403, "forbidden")
    assert "auditor" in body["detail"]


def test_404_unknown_partner_route_and_resources(world: World) -> None:
    body = assert_problem(world.client.get("/v1/partners/P-NOPE", headers=world.headers("ops")), 404, "unknown_partner")
    assert body["partner_id"] == "P-NOPE"
    response = world.client.post("/v1/partners/P-NOPE/approve", json={}, headers=world.headers("ops"))
    assert_problem(response, 404, "unknown_partner")
    assert_problem(world.client.get("/v1/nowhere", headers=world.headers("ops")), 404, "route_not_found")
    assert_problem(world.client.get("/v1/registrations/R-NOPE", headers=world.headers("ops")), 404, "not_found")
    assert_problem(world.client.get("/v1/commissions/lines/L-NOPE", headers=world.headers("ops")), 404, "not_found")
    assert_problem(world.client.get("/v1/sales/%20", headers=world.headers("ops")), 404, "not_found")


def test_405_method_not_allowed(world: World) -> None:
    assert_problem(world.client.delete("/v1/partners", headers=world.headers("ops")), 405, "method_not_allowed")


def test_409_invalid_transition_and_duplicates(world: World) -> None:
    response = world.client.post(f"/v1/partners/{ALPHA}/approve", json={}, headers=world.headers("ops"))
    body = assert_problem(response, 409, "invalid_transition")
    assert "active" in body["detail"]
    response = world.client.post(
        "/v1/partners",
        json={"partner_id": ALPHA, "name": "Again", "type": "reseller", "region": "VN", "size": "small"},
        headers=world.headers("ops"),
    )
    assert_problem(response, 409, "already_exists")
    different = {
        "sale_id": "S-A1",
        "partner_id": ALPHA,
        "customer": MINH_PHAT,
        "lines": [{"sku": "X", "quantity": 1, "unit_price_minor": 1, "currency": "VND"}],
        "occurred_at": "2026-02-01T10:00:00Z",
    }
    response = world.client.post("/v1/sales", json=different, headers=world.headers("service"))
    assert_problem(response, 409, "duplicate_with_different_data")


def test_409_channel_conflict_refund_and_capacity(world: World) -> None:
    customer = {"name": "Protected Account Ltd", "domain": "protected.vn", "country": "VN"}
    registration = {
        "customer": customer,
        "estimated_value_minor": 1,
        "currency": "VND",
        "products": ["software"],
        "submitted_at": "2026-04-01T00:00:00Z",
    }
    world.post("/v1/registrations", {**registration, "registration_id": "R-A5", "partner_id": ALPHA}, who="ops")
    world.post("/v1/registrations/R-A5/approve", {"at": "2026-04-01T01:00:00Z"}, who="ops")
    world.post("/v1/registrations", {**registration, "registration_id": "R-B5", "partner_id": "P-B"}, who="ops")
    response = world.client.post(
        "/v1/registrations/R-B5/approve", json={"at": "2026-04-02T00:00:00Z"}, headers=world.headers("ops")
    )
    assert_problem(response, 409, "channel_conflict")
    refund = {"refund_id": "RF-BIG", "amount_minor": 10**12, "currency": "VND", "occurred_at": "2026-03-02T00:00:00Z"}
    response = world.client.post("/v1/sales/S-A1/refunds", json=refund, headers=world.headers("service"))
    assert_problem(response, 409, "refund_exceeds_sale")
    registrations = world.get("/v1/registrations", partner_id=ALPHA)["items"]
    open_now = sum(r["status"] in ("submitted", "approved") for r in registrations)
    capacity = {"registered": open_now + 1, "silver": 200, "gold": 500, "platinum": 1000}
    world.post("/v1/programme/settings", {"changes": {"registration_capacity": capacity}, "reason": "test caps"})
    try:
        body = {
            "partner_id": ALPHA,
            "customer": {"name": "Capacity Customer One", "country": "VN"},
            "estimated_value_minor": 1,
            "currency": "VND",
            "products": ["software"],
            "submitted_at": "2026-03-01T00:00:00Z",
        }
        world.post("/v1/registrations", {**body, "registration_id": "R-CAP1"}, who="partner_a")
        second = {
            **body,
            "registration_id": "R-CAP2",
            "customer": {"name": "Another Company Entirely", "country": "VN"},
        }
        response = world.client.post("/v1/registrations", json=second, headers=world.headers("partner_a"))
        assert_problem(response, 409, "capacity_exceeded")
    finally:
        default = {"registered": 50, "silver": 200, "gold": 500, "platinum": 1000}
        world.post("/v1/programme/settings", {"changes": {"registration_capacity": default}, "reason": "restore"})


def test_422_validation_names_the_fields(world: World) -> None:
    response = world.client.post(
        "/v1/sales",
        json={
            "sale_id": "S-BAD",
            "customer": {"name": ""},
            "lines": [{"sku": "X", "quantity": 3.0, "unit_price_minor": "5", "currency": "VND"}],
            "occurred_at": "2026-02-01T10:00:00",
        },
        headers=world.headers("service"),
    )
    body = assert_problem(response, 422, "validation_failed")
    paths = {error["path"] for error in body["errors"]}
    assert {
        "body.customer.name",
        "body.lines[0].quantity",
        "body.lines[0].unit_price_minor",
        "body.occurred_at",
    } <= paths
    response = world.client.get("/v1/partners", params={"limit": 0}, headers=world.headers("ops"))
    assert {e["path"] for e in assert_problem(response, 422, "validation_failed")["errors"]} == {"query.limit"}


def test_422_from_the_domain(world: World) -> None:
    changes = {"tier_revenue_thresholds_minor": {"silver": 500, "gold": 100, "platinum": 1000}}
    response = world.client.post(
        "/v1/programme/settings", json={"changes": changes, "reason": "wrong"}, headers=world.headers("admin")
    )
    body = assert_problem(response, 422, "validation_failed")
    assert "rise" in body["detail"]
    assert body["errors"][0]["type"] == "validation_failed"


def test_400_malformed_json(world: World) -> None:
    response = world.client.post(
        "/v1/partners",
        content=b'{"partner_id": ',
        headers={**world.headers("ops"), "content-type": "application/json"},
    )
    assert_problem(response, 400, "malformed_json")


def test_422_invalid_cursor(world: World) -> None:
    response = world.client.get("/v1/partners", params={"cursor": "not-a-cursor"}, headers=world.headers("ops"))
    assert assert_problem(response, 422, "invalid_cursor")["errors"][0]["path"] == "query.cursor"


class _Lagging:
    """A read side stuck 5 positions behind the event store."""

    projections = ("ledger", "conflicts", "dashboards")

    def __init__(self, head: int) -> None:
        self.head = head

    def report(self) -> ProgressReport:
        return ProgressReport(head=self.head, positions=dict.fromkeys(self.projections, self.head - 5))

    def wait_for(self, position: int, projections: Any, timeout: float) -> ProgressReport:
        return self.report()


def test_504_when_the_read_models_do_not_reach_the_position(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    head = world.services.progress.report().head
    monkeypatch.setattr(world.services, "progress", _Lagging(head))
    response = world.client.get("/v1/partners", params={"min_position": head, "wait": 0}, headers=world.headers("ops"))
    body = assert_problem(response, 504, "projection_lag")
    assert body["min_position"] == head and body["reached"] == head - 5 and body["lag"] == 5
    assert body["projections"] == {"dashboards": head - 5}
    # without min_position the read is answered (from the lagging read model, with its position)
    response = world.client.get("/v1/partners", headers=world.headers("ops"))
    assert response.status_code == 200 and response.headers["x-prm-position"] == str(head - 5)
    ready = world.client.get("/readyz")
    assert ready.status_code == 200  # 5 behind is within the readiness bound


def test_422_for_a_position_never_recorded(world: World) -> None:
    response = world.client.get("/v1/partners", params={"min_position": 10**9}, headers=world.headers("ops"))
    body = assert_problem(response, 422, "position_not_recorded")
    assert body["errors"][0]["path"] == "query.min_position"


def test_409_payouts_pay_exactly_the_payable_balance(world: World) -> None:
    body = {"payout_id": "PO-X", "partner_id": ALPHA, "currency": "USD", "period": "2026-03"}
    response = world.client.post("/v1/payouts", json=body, headers=world.headers("admin"))
    assert assert_problem(response, 409, "nothing_payable")["payable_minor"] == 0
    body = {**body, "currency": "VND", "amount_minor": 1}
    response = world.client.post("/v1/payouts", json=body, headers=world.headers("admin"))
    assert assert_problem(response, 409, "payable_mismatch")["payable_minor"] > 0


def test_500_is_a_problem_with_the_request_id(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(routes_partners, "partner_summaries", broken)
    response = world.client.get("/v1/partners", headers={**world.headers("ops"), "X-Request-ID": "trace-42"})
    body = assert_problem(response, 500, "internal_error")
    assert body["request_id"] == "trace-42" == response.headers["x-request-id"]
    assert "secret" not in response.text


def test_request_id_is_echoed_or_made_up(world: World) -> None:
    response = world.client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    made_up = world.client.get("/healthz", headers={"X-Request-ID": "bad id with spaces"}).headers["x-request-id"]
    assert made_up != "bad id with spaces" and len(made_up) == 32


def test_openapi_documents_problems(world: World) -> None:
    schema = world.client.get("/openapi.json").json()
    assert schema["openapi"].startswith("3.1")
    assert "ProblemDetails" in schema["components"]["schemas"]
    operation = schema["paths"]["/v1/partners"]["post"]
    assert "application/problem+json" in operation["responses"]["default"]["content"]
    assert "application/problem+json" in operation["responses"]["422"]["content"]
    assert operation["operationId"] == "apply_partner"


def test_503_not_ready_names_the_failing_check(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    def broker_down() -> str:
        raise ConnectionError("127.0.0.1:19092: connection refused")

    monkeypatch.setitem(world.services.readiness, "broker", broker_down)
    body = assert_problem(world.client.get("/readyz"), 503, "not_ready")
    assert body["checks"]["broker"] == {"ok": False, "detail": "ConnectionError: 127.0.0.1:19092: connection refused"}
    assert body["checks"]["event_store"]["ok"] is True
    assert world.client.get("/healthz").status_code == 200


def test_503_when_a_database_is_unavailable(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    import psycopg

    def down(*args: Any, **kwargs: Any) -> Any:
        raise psycopg.OperationalError("connection refused")

    monkeypatch.setattr(routes_partners, "partner_summaries", down)
    response = world.client.get("/v1/partners", headers=world.headers("ops"))
    assert_problem(response, 503, "dependency_unavailable")
    assert response.headers["retry-after"] == "5"
