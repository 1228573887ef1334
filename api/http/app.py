"""The HTTP API: ``create_app(services)`` builds the FastAPI application (no work at import time).

* OpenAPI 3.1 at ``/openapi.json``, interactive docs at ``/docs``;
* every error is an RFC 9457 problem (``application/problem+json``), see :mod:`api.http.problems`;
* API keys and one permission table, see :mod:`api.http.auth`;
* request ids: ``X-Request-ID`` is taken from the request (or made up), bound into the
  structlog context of everything logged while serving it, and returned;
* ``/healthz`` (the process is up), ``/readyz`` (event store, read models' lag, the broker
  when configured), ``/metrics`` (Prometheus: request latency by route template, projection
  lag, relay lag and dead letters when known).
"""

from __future__ import annotations

import re
import time
import traceback
import uuid
from dataclasses import dataclass
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute, iter_route_contexts
from prometheus_client import CONTENT_TYPE_LATEST, Histogram, generate_latest
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.http import (
    routes_commissions,
    routes_conflicts,
    routes_contracts,
    routes_dashboards,
    routes_partners,
    routes_payouts,
    routes_plans,
    routes_programme,
    routes_registrations,
    routes_sales,
)
from api.http.problems import HANDLERS, PROBLEM_MEDIA_TYPE, Problem, ProblemDetails, problem_response
from api.http.reads import services_of
from api.http.services import ApiServices
from api.http.views import Health, Readiness

__all__ = ["create_app"]

log = structlog.get_logger("prm.api")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

DESCRIPTION = """\
The partner relationship management backend: partners, contracts, deal registrations, sales,
commission plans and payouts (commands), and the read models built from the events (commission
ledger, channel conflicts, dashboards).

* **Authentication**: an API key, as `Authorization: Bearer <key>` or `X-API-Key: <key>`
  (create one with `prm keys create --role …`). Roles: `admin`, `ops`, `auditor`, `service`, `partner`.
* **Commands** answer `202 Accepted` with the event-store `position` they recorded. The read models
  follow asynchronously: read with `?min_position=<position>` to see your own write (the read waits
  up to `?wait=` seconds, 5 by default, at most 30; `504` with the lag otherwise).
* **Reads** carry an `ETag` (send it back in `If-None-Match` for a `304`) and `X-PRM-Position`.
  Lists are paginated with an opaque `cursor` (`next_cursor` of the previous page).
* **Errors** are RFC 9457 problem details (`application/problem+json`) with a stable `type` URI.
"""


class RequestContext:
    """Pure ASGI middleware: request id, structlog context, latency histogram, last-resort 500 problem."""

    def __init__(self, app: ASGIApp, histogram: Histogram) -> None:
        self.app = app
        self.histogram = histogram

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500
        started = False
        begin = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = int(message["status"])
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_id)
            except Exception as exc:
                # The traceback as plain text: a renderer that pretty-prints locals can take seconds.
                log.error(
                    "unhandled error",
                    method=scope.get("method"),
                    path=scope.get("path"),
                    error=f"{type(exc).__name__}: {exc}",
                    traceback="".join(traceback.format_exception(exc)),
                )
                if started:
                    raise
                request = Request(scope)
                problem = Problem(
                    500, "internal_error", "an unexpected error occurred; quote the request id when reporting it"
                )
                await problem_response(request, problem)(scope, receive, send_with_id)
            finally:
                route = scope.get("route")
                template = getattr(route, "path", None) or "unmatched"
                elapsed = time.perf_counter() - begin
                self.histogram.labels(scope.get("method", ""), template, str(status)).observe(elapsed)
                log.info(
                    "request",
                    method=scope.get("method"),
                    route=template,
                    status=status,
                    duration_ms=round(elapsed * 1000, 2),
                )


def _refresh_gauges(services: ApiServices) -> dict[str, Any]:
    report = services.progress.report()
    gauges = services.gauges
    gauges.set_store_position(report.head)
    for name, position in report.positions.items():
        gauges.set_projection(name, position=position, head=report.head)
    if report.relay_lag is not None:
        gauges.set_relay_lag(report.relay_lag)
    if report.deadletters is not None:
        gauges.set_deadletters(report.deadletters)
    return {"head": report.head, "positions": report.positions, "lag": report.lag()}


def _ops_routes(app: FastAPI) -> None:
    @app.get("/healthz", name="healthz", response_model=Health, tags=["operations"])
    def healthz() -> dict[str, str]:
        """The process is up (no dependency is checked)."""
        return {"status": "ok"}

    @app.get(
        "/readyz",
        name="readyz",
        response_model=Readiness,
        tags=["operations"],
        responses={503: {"description": "Not ready: a dependency failed or the read models lag too far."}},
    )
    def readyz(request: Request) -> Response:
        """Ready to serve: the event store answers, the read models are close enough, the broker answers."""
        services = services_of(request)
        checks: dict[str, dict[str, Any]] = {}
        ready = True
        try:
            figures = _refresh_gauges(services)
            ok = figures["lag"] <= services.max_ready_lag
            ready = ready and ok
            checks["event_store"] = {"ok": True, "detail": f"position {figures['head']}"}
            checks["read_models"] = {
                "ok": ok,
                "detail": f"lag {figures['lag']} (at most {services.max_ready_lag})",
                "positions": figures["positions"],
            }
        except Exception as exc:
            ready = False
            checks["event_store"] = {"ok": False, "detail": f"{type(exc).__name__}: {exc}"[:300]}
        for name, check in services.readiness.items():
            try:
                checks[name] = {"ok": True, "detail": check()}
            except Exception as exc:
                ready = False
                checks[name] = {"ok": False, "detail": f"{type(exc).__name__}: {exc}"[:300]}
        if ready:
            return JSONResponse({"status": "ready", "checks": checks})
        failing = ", ".join(name for name, check in checks.items() if not check["ok"])
        return problem_response(request, Problem(503, "not_ready", f"not ready: {failing}", checks=checks))

    @app.get(
        "/metrics",
        name="metrics",
        tags=["operations"],
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}}}},
    )
    def metrics(request: Request) -> Response:
        """Prometheus metrics of this process."""
        services = services_of(request)
        try:
            _refresh_gauges(services)
        except Exception as exc:  # the scrape still reports the request metrics
            log.warning("metrics: progress unavailable", error=str(exc))
        return Response(generate_latest(services.gauges.registry), media_type=CONTENT_TYPE_LATEST)


def _openapi(app: FastAPI) -> dict[str, Any]:
    """OpenAPI 3.1 with one problem+json schema for every error response."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes, tags=app.openapi_tags
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name, model_schema in (
        ProblemDetails.model_json_schema(ref_template="#/components/schemas/{model}").get("$defs", {}).items()
    ):
        components[name] = model_schema
    problem_schema = ProblemDetails.model_json_schema(ref_template="#/components/schemas/{model}")
    problem_schema.pop("$defs", None)
    components["ProblemDetails"] = problem_schema
    problem = {
        "description": "A problem (RFC 9457): the error's stable `type`, `status`, `detail` and `request_id`.",
        "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/ProblemDetails"}}},
    }
    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            responses = operation.setdefault("responses", {})
            if "422" in responses:
                responses["422"] = {**problem, "description": "Invalid request (the `errors` name the fields)."}
            for status, text in (("503", "Not ready."),):
                if status in responses:
                    responses[status] = {**problem, "description": responses[status].get("description", text)}
            responses["default"] = problem
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    app.openapi_schema = schema
    return schema


def create_app(services: ApiServices) -> FastAPI:
    """The HTTP API over ``services`` (built by the composition root)."""
    app = FastAPI(
        title="prm: partner relationship management",
        version="1",
        description=DESCRIPTION,
        openapi_url="/openapi.json",
        docs_url="/docs",
        redoc_url=None,
        generate_unique_id_function=lambda route: route.name,
    )
    app.state.services = services
    for exc_type, handler in HANDLERS:
        app.add_exception_handler(exc_type, handler)
    for module in (
        routes_partners,
        routes_contracts,
        routes_registrations,
        routes_sales,
        routes_plans,
        routes_payouts,
        routes_programme,
        routes_conflicts,
        routes_commissions,
        routes_dashboards,
    ):
        app.include_router(module.router)
    _ops_routes(app)
    app.add_middleware(RequestContext, histogram=services.gauges.request_latency())
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


@dataclass(frozen=True)
class RouteInfo:
    name: str
    path: str
    methods: frozenset[str]


def api_routes(app: FastAPI) -> list[RouteInfo]:
    """Every API route (name = the permission table's key, full path template, methods), for tests and docs."""
    found = []
    for context in iter_route_contexts(app.routes):
        if isinstance(context.original_route, APIRoute) and context.name and context.path:
            found.append(RouteInfo(context.name, context.path, frozenset(context.methods or ())))
    return found
