"""A small programme built through the HTTP API on the embedded composition, for the API tests.

Two active partners with data of their own and one channel conflict between them:

* ``P-A`` (Alpha, VN): registration ``R-A1`` (approved), sale ``S-A1`` on it (won, refunded in part);
* ``P-B`` (Beta, TH): registration ``R-B1`` on the same account as ``R-A1`` (a partner-vs-partner
  conflict, resolved for ``R-A1``), registration ``R-B2`` (approved), sale ``S-B1`` in USD;
* a direct opportunity ``O-1`` on ``R-A1``'s account (a direct-vs-partner conflict) and a direct sale.

Everything runs on a SQLite event store in a temporary directory, the projections in-process
(``LocalProjector``), API keys in an in-memory SQLite key store.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from api.bootstrap import build_api_services
from api.http.app import create_app
from api.http.keys import SQLiteKeyStore
from api.http.services import ApiServices
from api.settings import Settings
from projections.metrics import Gauges

PLAN = "STD"
ALPHA, BETA = "P-A", "P-B"
ALPHA_NAME, BETA_NAME = "Alpha Solutions", "Beta Distribution"
MINH_PHAT = {"name": "Minh Phat Trading", "domain": "minhphat.vn", "tax_id": None, "country": "VN"}
BKK_FOODS = {"name": "Bangkok Foods Co", "domain": "bkkfoods.co.th", "tax_id": None, "country": "TH"}
DIRECT_CO = {"name": "Direct Customer JSC", "domain": "directco.vn", "tax_id": None, "country": "VN"}


def build_services(directory: Path) -> ApiServices:
    settings = Settings(
        store="sqlite",
        sqlite_path=directory / "events.sqlite",
        read_models="memory",
        projection_source="local",
        _env_file=None,  # type: ignore[call-arg]
    )
    return build_api_services(settings, keys=SQLiteKeyStore(":memory:"), gauges=Gauges())


@dataclass
class World:
    client: TestClient
    services: ApiServices
    tokens: dict[str, str] = field(default_factory=dict)
    ids: dict[str, Any] = field(default_factory=dict)

    def headers(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    def post(self, path: str, body: dict[str, Any], who: str = "admin", expect: int = 202) -> dict[str, Any]:
        response = self.client.post(path, json=body, headers=self.headers(who))
        assert response.status_code == expect, (path, response.status_code, response.text)
        result: dict[str, Any] = response.json()
        return result

    def get(self, path: str, who: str = "admin", expect: int = 200, **params: Any) -> Any:
        response = self.client.get(path, params=params, headers=self.headers(who))
        assert response.status_code == expect, (path, response.status_code, response.text)
        return response.json()


def _active_partner(world: World, partner_id: str, name: str, type_: str, region: str, day: int) -> None:
    at = f"2026-01-{day:02d}T09:00:00Z"
    world.post(
        "/v1/partners",
        {"partner_id": partner_id, "name": name, "type": type_, "region": region, "size": "small", "at": at},
    )
    world.post(f"/v1/partners/{partner_id}/approve", {"at": at})
    world.post(
        "/v1/contracts",
        {
            "contract_id": f"C-{partner_id}",
            "partner_id": partner_id,
            "starts_on": "2026-01-01",
            "ends_on": "2026-12-31",
            "auto_renew": False,
            "territory": [region],
            "terms": "Standard reseller agreement",
            "commission_plan_id": PLAN,
            "at": at,
        },
        who="ops",
    )
    world.post(
        f"/v1/partners/{partner_id}/trainings",
        {"course": "partner-onboarding", "person": f"lead@{partner_id.lower()}.example", "at": at},
        who="ops",
    )


def _registration(world: World, registration_id: str, partner_id: str, customer: dict[str, Any], day: int) -> Any:
    return world.post(
        "/v1/registrations",
        {
            "registration_id": registration_id,
            "partner_id": partner_id,
            "customer": customer,
            "estimated_value_minor": 50_000_000,
            "currency": "VND",
            "products": ["software"],
            "expected_close_on": "2026-06-30",
            "submitted_at": f"2026-01-{day:02d}T10:00:00Z",
        },
        who="partner_a" if partner_id == ALPHA else "partner_b",
    )


def seed(world: World) -> None:
    keys = world.services.keys
    for who, role, partner, label in (
        ("admin", "admin", None, "admin@prm.test"),
        ("ops", "ops", None, "ops@prm.test"),
        ("auditor", "auditor", None, "auditor@prm.test"),
        ("service", "service", None, "erp/hanoi"),
        ("partner_a", "partner", ALPHA, "lead@p-a.example"),
        ("partner_b", "partner", BETA, "lead@p-b.example"),
    ):
        world.tokens[who] = keys.create(role, label=label, partner_id=partner).token
    world.post("/v1/plans", {"plan_id": PLAN, "name": "Standard", "at": "2025-12-01T00:00:00Z"})
    world.post(
        f"/v1/plans/{PLAN}/versions",
        {"effective_from": "2025-12-01T00:00:00Z", "terms": {}, "reason": "the spec's defaults"},
    )
    _active_partner(world, ALPHA, ALPHA_NAME, "reseller", "VN", 5)
    _active_partner(world, BETA, BETA_NAME, "distributor", "TH", 6)
    _registration(world, "R-A1", ALPHA, MINH_PHAT, 10)
    world.post("/v1/registrations/R-A1/approve", {"at": "2026-01-11T09:00:00Z"}, who="ops")
    conflicted = _registration(world, "R-B1", BETA, MINH_PHAT, 12)
    world.ids["conflict_pvp"] = conflicted["details"]["conflicts"][0]
    _registration(world, "R-B2", BETA, BKK_FOODS, 12)
    world.post("/v1/registrations/R-B2/approve", {"at": "2026-01-13T09:00:00Z"}, who="ops")
    line = {"sku": "CRM-PRO-12M", "category": "software", "quantity": 3, "unit_price_minor": 12_000_000}
    world.post(
        "/v1/sales",
        {
            "sale_id": "S-A1",
            "partner_id": ALPHA,
            "registration_id": "R-A1",
            "customer": MINH_PHAT,
            "lines": [{**line, "currency": "VND"}],
            "occurred_at": "2026-02-01T10:00:00Z",
        },
        who="service",
    )
    world.post(
        "/v1/sales",
        {
            "sale_id": "S-B1",
            "partner_id": BETA,
            "registration_id": "R-B2",
            "customer": BKK_FOODS,
            "lines": [
                {"sku": "HW-1", "category": "hardware", "quantity": 2, "unit_price_minor": 125_000, "currency": "USD"}
            ],
            "occurred_at": "2026-02-10T10:00:00Z",
        },
        who="service",
    )
    world.post(
        "/v1/sales/S-A1/refunds",
        {"refund_id": "RF-1", "amount_minor": 12_000_000, "currency": "VND", "occurred_at": "2026-03-01T10:00:00Z"},
        who="service",
    )
    world.post(
        "/v1/opportunities",
        {
            "opportunity_id": "O-1",
            "owner": "direct.sales@prm.test",
            "customer": MINH_PHAT,
            "estimated_value_minor": 100_000_000,
            "currency": "VND",
            "opened_at": "2026-02-15T10:00:00Z",
        },
        who="service",
    )
    result = world.post(
        "/v1/sales",
        {
            "sale_id": "S-D1",
            "customer": DIRECT_CO,
            "lines": [{**line, "quantity": 1, "currency": "VND"}],
            "occurred_at": "2026-02-20T10:00:00Z",
        },
        who="service",
    )
    world.post(
        f"/v1/conflicts/{world.ids['conflict_pvp']}/resolve",
        {"winner": "R-A1", "reason": "Alpha registered first", "at": "2026-01-20T09:00:00Z"},
        who="ops",
    )
    conflicts = world.get("/v1/conflicts", kind="direct_vs_partner")["items"]
    world.ids["conflict_direct"] = conflicts[0]["conflict_id"]
    lines = world.get("/v1/commissions/lines")["items"]
    world.ids["line_a"] = next(x["line_id"] for x in lines if x["partner_id"] == ALPHA)
    world.ids["line_b"] = next(x["line_id"] for x in lines if x["partner_id"] == BETA)
    world.ids["last_position"] = result["position"]


def make_world(directory: Path) -> Iterator[World]:
    services = build_services(directory)
    app = create_app(services)
    with TestClient(app, raise_server_exceptions=False) as client:
        world = World(client, services)
        seed(world)
        yield world
    services.close()
