"""The authorisation matrix (every route x every role, as the permission table says) and data isolation.

A partner key must never see another partner's data through any endpoint or filter: every GET route
is called with the other partner's ids and filters (and with none), and every answer is searched for
the other partner's identifiers, names, customers and lines.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from api.http.app import RouteInfo, api_routes
from api.http.auth import PERMISSIONS, PUBLIC
from api.http.keys import ROLES
from tests.unit.api_world import ALPHA, ALPHA_NAME, BETA, BETA_NAME, World, make_world

ROLE_TOKENS = {"admin": "admin", "ops": "ops", "auditor": "auditor", "service": "service", "partner": "partner_a"}
_PARAM = re.compile(r"{(\w+)}")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield from make_world(tmp_path_factory.mktemp("authz"))


def _routes(world: World) -> list[RouteInfo]:
    return api_routes(world.client.app)  # type: ignore[arg-type]


def _own_values(world: World) -> dict[str, str]:
    return {
        "partner_id": ALPHA,
        "registration_id": "R-A1",
        "contract_id": "C-P-A",
        "conflict_id": world.ids["conflict_pvp"],
        "line_id": world.ids["line_a"],
        "plan_id": "STD",
        "sale_id": "S-A1",
        "opportunity_id": "O-1",
        "kpi": "revenue",
    }


REQUIRED_QUERY: dict[str, dict[str, str]] = {
    "dashboard": {"period": "2026-Q1"},
    "dashboard_kpi": {"period": "2026-Q1"},
    "leaderboard": {"period": "2026-Q1"},
    "partner_statement": {"currency": "VND", "month": "2026-02"},
}


def _call(world: World, route: RouteInfo, token: str | None, values: dict[str, str], **query: Any) -> Any:
    path = _PARAM.sub(lambda m: values[m.group(1)], route.path)
    headers = {"Authorization": f"Bearer {world.tokens[token]}"} if token else {}
    method = next(iter(route.methods))
    params = {**REQUIRED_QUERY.get(route.name, {}), **query}
    if method == "GET":
        return world.client.get(path, params=params, headers=headers)
    # An invalid body: an allowed caller gets 422, never a side effect; a refused one 403 first.
    return world.client.request(method, path, json={"not_a_field": 1}, headers=headers)


def test_every_route_has_a_permission_and_every_permission_a_route(world: World) -> None:
    names = {route.name for route in _routes(world)}
    assert names - PUBLIC == set(PERMISSIONS), "routes and the permission table disagree"
    assert names >= PUBLIC
    for route in _routes(world):
        if route.name not in PUBLIC:
            assert route.path.startswith("/v1/"), route.path


def test_public_routes_answer_without_a_key(world: World) -> None:
    for route in _routes(world):
        if route.name in PUBLIC:
            assert world.client.get(route.path).status_code == 200, route.path
    assert world.client.get("/openapi.json").status_code == 200
    assert world.client.get("/docs").status_code == 200


def test_every_protected_route_needs_a_key(world: World) -> None:
    values = _own_values(world)
    for route in _routes(world):
        if route.name in PUBLIC:
            continue
        response = _call(world, route, None, values)
        assert response.status_code == 401, (route.name, response.status_code, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["type"] == "https://prm.dev/problems/unauthenticated"


@pytest.mark.parametrize("role", ROLES)
def test_authorisation_matrix(world: World, role: str) -> None:
    """Each role on each route: allowed (never 401/403/5xx) or 403, exactly as the table says."""
    values = _own_values(world)
    checked = 0
    for route in _routes(world):
        if route.name in PUBLIC:
            continue
        response = _call(world, route, ROLE_TOKENS[role], values)
        allowed = role in PERMISSIONS[route.name].roles
        where = (role, next(iter(route.methods)), route.path, response.status_code, response.text[:300])
        assert response.status_code < 500, where
        if allowed:
            assert response.status_code not in (401, 403), where
        else:
            assert response.status_code == 403, where
            assert response.json()["type"] == "https://prm.dev/problems/forbidden", where
        checked += 1
    assert checked == len(PERMISSIONS)


def test_revoked_key_is_refused(world: World) -> None:
    issued = world.services.keys.create("auditor", label="temp")
    headers = {"X-API-Key": issued.token}
    assert world.client.get("/v1/me", headers=headers).json()["role"] == "auditor"
    world.services.keys.revoke(issued.key.key_id)
    response = world.client.get("/v1/me", headers=headers)
    assert response.status_code == 401
    assert response.json()["code"] == "invalid_api_key"


# ---------------------------------------------------------------- data isolation


def _values_of(world: World, partner: str) -> dict[str, str]:
    if partner == ALPHA:
        return _own_values(world)
    return {
        **_own_values(world),
        "partner_id": BETA,
        "registration_id": "R-B1",
        "contract_id": "C-P-B",
        "line_id": world.ids["line_b"],
        "sale_id": "S-B1",
    }


FORBIDDEN = {
    # what partner A must never see of partner B, and the other way round
    ALPHA: [BETA, "R-B1", "R-B2", "S-B1", "C-P-B", BETA_NAME, "Bangkok Foods", "bkkfoods", "lead@p-b", "L-S-B1"],
    BETA: [ALPHA, "R-A1", "S-A1", "RF-1", "C-P-A", ALPHA_NAME, "lead@p-a", "L-S-A1", "CB-S-A1"],
}
TOKEN = {ALPHA: "partner_a", BETA: "partner_b"}


def _assert_clean(viewer: str, response: Any, where: Any) -> None:
    text = response.text
    leaked = [token for token in FORBIDDEN[viewer] if token in text]
    assert not leaked, (where, leaked, text[:500])


@pytest.mark.parametrize("viewer", [ALPHA, BETA])
def test_partner_key_never_sees_another_partners_data(world: World, viewer: str) -> None:
    other = BETA if viewer == ALPHA else ALPHA
    own_values, other_values = _values_of(world, viewer), _values_of(world, other)
    seen_own = set()
    for route in _routes(world):
        if "GET" not in route.methods or route.name in PUBLIC:
            continue
        attempts = [
            (other_values, {}),
            (other_values, {"partner_id": other}),
            (own_values, {"partner_id": other}),
            (own_values, {}),
            (own_values, {"type": "distributor", "region": "TH", "tier": "registered"}),
        ]
        for values, query in attempts:
            response = _call(world, route, TOKEN[viewer], values, **query)
            where = (viewer, route.path, values.get("partner_id"), query, response.status_code)
            assert response.status_code in (200, 403, 404, 422), (where, response.text[:300])
            if response.status_code == 200:
                _assert_clean(viewer, response, where)
                if values is own_values:
                    seen_own.add(route.name)
    # Isolation is not vacuous: the partner does see its own data.
    assert {"get_partner", "partner_history", "list_registrations", "get_registration"} <= seen_own
    assert {"list_commission_lines", "explain_commission_line", "partner_statement", "dashboard"} <= seen_own


def test_partner_sees_its_own_data(world: World) -> None:
    assert world.get(f"/v1/partners/{ALPHA}", who="partner_a")["name"] == ALPHA_NAME
    registrations = world.get("/v1/registrations", who="partner_a")["items"]
    assert [r["registration_id"] for r in registrations] == ["R-A1"]
    lines = world.get("/v1/commissions/lines", who="partner_a")["items"]
    assert lines and {line["partner_id"] for line in lines} == {ALPHA}
    dashboard = world.get("/v1/dashboards", who="partner_a", period="2026-Q1")
    assert dashboard["partner_id"] == ALPHA and dashboard["partners"] == [ALPHA]
    assert "channel_revenue" not in dashboard and "leaderboard" not in dashboard
    assert dashboard["revenue"]["VND"]["gross_minor"] == 36_000_000


def test_partner_cannot_act_for_another_partner(world: World) -> None:
    body = {
        "registration_id": "R-X",
        "partner_id": BETA,
        "customer": {"name": "Someone Else"},
        "estimated_value_minor": 1,
        "currency": "VND",
        "products": ["software"],
    }
    response = world.client.post("/v1/registrations", json=body, headers=world.headers("partner_a"))
    assert response.status_code == 403
    assert response.json()["code"] == "forbidden_partner"
    response = world.client.post("/v1/registrations/R-B2/withdraw", json={}, headers=world.headers("partner_a"))
    assert response.status_code == 404
    # B's registration is untouched
    assert world.get("/v1/registrations/R-B2", who="partner_b")["status"] == "won"


def test_partner_history_redacts_the_other_side_of_a_conflict(world: World) -> None:
    entries = world.get(f"/v1/partners/{BETA}/history", who="partner_b", limit=500)["items"]
    submitted = next(e for e in entries if e["subject"] == "R-B1" and e["type"].endswith(".submitted.v1"))
    assert submitted["data"]["conflicts_with"] == [{"conflict_id": world.ids["conflict_pvp"]}]
    resolved = next(e for e in entries if e["type"].endswith(".conflict_resolved.v1"))
    assert resolved["data"]["winner"] == "another party"
    # an ops key sees the whole event
    full = world.get(f"/v1/partners/{BETA}/history", who="ops", limit=500)["items"]
    assert any(e["data"].get("winner") == "R-A1" for e in full)


def test_service_reads_back_only_what_it_published(world: World) -> None:
    assert world.get("/v1/sales/S-A1", who="service")["source"] == "erp/hanoi"
    other = world.services.keys.create("service", label="shop/web").token
    response = world.client.get("/v1/sales/S-A1", headers={"Authorization": f"Bearer {other}"})
    assert response.status_code == 404
