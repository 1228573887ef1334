"""Who may call what: API-key authentication and one declarative permission table.

Every route of the API has an entry in :data:`PERMISSIONS`, keyed by the
route's name (its OpenAPI ``operationId``): the roles allowed to call it, and
for partner keys how the route is scoped to the key's partner. The single
dependency :func:`authorize` (on every router) authenticates the key, looks the
route up in the table and refuses with 403 what the table does not allow; a
route missing from the table is refused to everyone (fail closed). The
authorisation-matrix test enumerates the app's routes against this table.

Roles
-----
``admin``    everything.
``ops``      commands on partners, contracts, registrations and channel conflicts; every read.
``auditor``  every read, explanations of commission lines, history (exports and replays are CLI).
``service``  publishes sales, refunds and opportunities; reads back what it published.
``partner``  bound to one partner: its own partner record, history, registrations (submit,
             withdraw), commissions, statements and dashboard -- nothing of any other partner.

Partner scoping (``scope``)
---------------------------
``path``     the ``partner_id`` path parameter must be the key's partner (403 otherwise);
``query``    a ``partner_id`` filter must be the key's partner (403 otherwise) and is forced to it;
``owned``    the resource (a registration, a commission line) is looked up and answered 404 when it
             belongs to another partner, as if it did not exist;
``body``     the ``partner_id`` of the command body must be the key's partner (403 otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from api.http.keys import ADMIN, AUDITOR, OPS, PARTNER, ROLES, SERVICE, ApiKey
from api.http.problems import Problem

__all__ = [
    "PERMISSIONS",
    "PUBLIC",
    "Auth",
    "Permission",
    "Principal",
    "authorize",
]

READERS = frozenset({ADMIN, OPS, AUDITOR})


@dataclass(frozen=True)
class Permission:
    roles: frozenset[str]
    scope: str | None = None  # how a partner key is scoped: path, query, owned, body
    description: str = ""


def _p(*roles: str, scope: str | None = None) -> Permission:
    unknown = set(roles) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown roles {sorted(unknown)}")
    return Permission(frozenset(roles), scope)


_READ = (ADMIN, OPS, AUDITOR)
_OPS = (ADMIN, OPS)

PUBLIC = frozenset({"healthz", "readyz", "metrics"})
"""Routes answered without a key (probes and the Prometheus scrape)."""

PERMISSIONS: dict[str, Permission] = {
    # who am I
    "whoami": _p(*ROLES),
    # partners
    "list_partners": _p(*_READ, PARTNER, scope="query"),
    "get_partner": _p(*_READ, PARTNER, scope="path"),
    "partner_history": _p(*_READ, PARTNER, scope="path"),
    "partner_contracts": _p(*_READ, PARTNER, scope="path"),
    "apply_partner": _p(*_OPS),
    "approve_partner": _p(*_OPS),
    "reject_partner": _p(*_OPS),
    "suspend_partner": _p(*_OPS),
    "reinstate_partner": _p(*_OPS),
    "terminate_partner": _p(*_OPS),
    "change_segment": _p(*_OPS),
    "override_tier": _p(*_OPS),
    "evaluate_tier": _p(*_OPS),
    "record_training": _p(*_OPS),
    "grant_certification": _p(*_OPS),
    # contracts
    "get_contract": _p(*_READ),
    "sign_contract": _p(*_OPS),
    "amend_contract": _p(*_OPS),
    "renew_contract": _p(*_OPS),
    "terminate_contract": _p(*_OPS),
    "expire_contract": _p(*_OPS),
    # deal registrations
    "list_registrations": _p(*_READ, PARTNER, scope="query"),
    "get_registration": _p(*_READ, PARTNER, scope="owned"),
    "submit_registration": _p(*_OPS, PARTNER, scope="body"),
    "approve_registration": _p(*_OPS),
    "reject_registration": _p(*_OPS),
    "extend_protection": _p(*_OPS),
    "mark_registration_lost": _p(*_OPS),
    "withdraw_registration": _p(*_OPS, PARTNER, scope="owned"),
    "expire_registrations": _p(*_OPS),
    # sales, refunds, opportunities (internal services)
    "record_sale": _p(ADMIN, SERVICE),
    "refund_sale": _p(ADMIN, SERVICE),
    "open_opportunity": _p(ADMIN, SERVICE),
    "get_sale": _p(*_READ, SERVICE),
    "get_opportunity": _p(*_READ, SERVICE),
    # commission plans, payouts, programme settings
    "list_plans": _p(*_READ),
    "get_plan": _p(*_READ),
    "create_plan": _p(ADMIN),
    "publish_plan_version": _p(ADMIN),
    "request_recalculation": _p(ADMIN),
    "record_payout": _p(ADMIN),
    "get_settings": _p(*_READ),
    "change_settings": _p(ADMIN),
    # channel conflicts
    "list_conflicts": _p(*_READ),
    "get_conflict": _p(*_READ),
    "resolve_conflict": _p(*_OPS),
    "dismiss_conflict": _p(*_OPS),
    # commissions
    "list_commission_lines": _p(*_READ, PARTNER, scope="query"),
    "explain_commission_line": _p(*_READ, PARTNER, scope="owned"),
    "commission_balances": _p(*_READ, PARTNER, scope="query"),
    "partner_statement": _p(*_READ, PARTNER, scope="path"),
    "commission_discrepancies": _p(*_READ),
    # dashboards
    "dashboard": _p(*_READ, PARTNER, scope="query"),
    "dashboard_kpi": _p(*_READ),
    "leaderboard": _p(*_READ),
}


@dataclass(frozen=True)
class Principal:
    """The caller: its key, and what it may see."""

    key: ApiKey

    @property
    def role(self) -> str:
        return self.key.role

    @property
    def actor(self) -> str:
        """Who the commands sent with this key are recorded as done by."""
        return self.key.label

    @property
    def partner_id(self) -> str | None:
        return self.key.partner_id if self.key.role == PARTNER else None

    @property
    def is_partner(self) -> bool:
        return self.key.role == PARTNER

    def partner_filter(self, requested: str | None) -> str | None:
        """A ``partner_id`` filter as this caller may use it: forced to its own partner for a partner key."""
        if not self.is_partner:
            return requested
        if requested is not None and requested != self.partner_id:
            raise Problem(403, "forbidden_partner", "a partner key sees only its own partner's data")
        return self.partner_id

    def require_own(self, partner_id: str | None) -> None:
        """403 when a partner key acts for another partner (command bodies)."""
        if self.is_partner and partner_id != self.partner_id:
            raise Problem(403, "forbidden_partner", "a partner key acts only for its own partner")

    def owns(self, partner_id: str | None) -> bool:
        """Whether this caller may see a resource of ``partner_id`` (404 it otherwise)."""
        return not self.is_partner or partner_id == self.partner_id


_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer prm_<key id>_<secret>`")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="The API key, as an alternative to Bearer.")


def authorize(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    api_key: Annotated[str | None, Depends(_header)],
) -> Principal:
    """Authenticate the key and check the route against :data:`PERMISSIONS` (see the module docstring)."""
    token = bearer.credentials if bearer is not None else api_key
    if not token:
        raise Problem(
            401,
            "unauthenticated",
            "an API key is required: Authorization: Bearer <key> or X-API-Key: <key>",
            headers={"WWW-Authenticate": 'Bearer realm="prm"'},
        )
    key = request.app.state.services.keys.authenticate(token)
    if key is None:
        raise Problem(
            401,
            "invalid_api_key",
            "the API key is unknown, malformed or revoked",
            headers={"WWW-Authenticate": 'Bearer realm="prm", error="invalid_token"'},
        )
    principal = Principal(key)
    request.state.principal = principal
    route = request.scope.get("route")
    name = getattr(route, "name", None)
    permission = PERMISSIONS.get(name) if isinstance(name, str) else None
    if permission is None or key.role not in permission.roles:
        raise Problem(403, "forbidden", f"the {key.role} role may not call {request.method} {request.url.path}")
    if (
        principal.is_partner
        and permission.scope == "path"
        and request.path_params.get("partner_id") != principal.partner_id
    ):
        raise Problem(403, "forbidden_partner", "a partner key sees only its own partner's data")
    return principal


Auth = Annotated[Principal, Depends(authorize)]
"""The one dependency of every protected route."""
