"""One error format: RFC 9457 problem details (``application/problem+json``).

``type`` is a stable URI per error code (``https://prm.dev/problems/<code>``),
``title`` a short summary of the kind, ``status`` the HTTP status, ``detail``
what happened this time, ``instance`` the request path, ``request_id`` the
request's id (also in ``X-Request-ID``), ``errors`` the field paths of a
validation failure (``body.customer.name``, ``query.limit``), plus extension
members of some problems (``lag``, ``min_position``...).

Domain errors keep their stable ``code``: not found / unknown partner -> 404;
invalid transitions, conflicts, duplicates, capacity -> 409; validation -> 422.
An unexpected exception is logged with the request id and answered with a 500
problem that carries that id and nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
import psycopg
import structlog
from eventsourcing.persistence import OperationalError as EventStoreUnavailable
from eventsourcing.persistence import RecordConflictError
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from domain.errors import (
    AlreadyExists,
    CapacityExceeded,
    ChannelConflictBlocks,
    CurrencyMismatch,
    DomainError,
    DuplicateWithDifferentData,
    InvalidTransition,
    NotFound,
    OverlappingPlanVersion,
    PartnerCannotRegister,
    RefundExceedsSale,
    ValidationFailed,
)

__all__ = [
    "PROBLEM_BASE",
    "PROBLEM_MEDIA_TYPE",
    "FieldError",
    "Problem",
    "ProblemDetails",
    "problem_response",
]

PROBLEM_BASE = "https://prm.dev/problems/"
PROBLEM_MEDIA_TYPE = "application/problem+json"
log = structlog.get_logger("prm.api")

_TITLES = {
    400: "Bad request",
    401: "Authentication required",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    406: "Not acceptable",
    409: "Conflict with the current state",
    413: "Request too large",
    415: "Unsupported media type",
    422: "Invalid request",
    500: "Internal server error",
    503: "Service unavailable",
    504: "Read model not up to date",
}

_DOMAIN_STATUS: list[tuple[type[DomainError], int]] = [
    (NotFound, 404),  # includes UnknownPartner
    (ValidationFailed, 422),  # includes ReasonRequired
    (InvalidTransition, 409),
    (AlreadyExists, 409),
    (CapacityExceeded, 409),
    (PartnerCannotRegister, 409),
    (ChannelConflictBlocks, 409),
    (RefundExceedsSale, 409),
    (CurrencyMismatch, 409),
    (DuplicateWithDifferentData, 409),
    (OverlappingPlanVersion, 409),
]


class FieldError(BaseModel):
    path: str = Field(description="Where: body.customer.name, query.limit, path.partner_id…")
    message: str
    type: str = Field(description="Stable machine-readable kind of the error.")


class ProblemDetails(BaseModel):
    """RFC 9457 problem details."""

    type: str = Field(description="Stable URI of the kind of problem: https://prm.dev/problems/<code>.")
    title: str
    status: int
    detail: str
    instance: str | None = None
    code: str = Field(description="The last segment of ``type``: a stable error code.")
    request_id: str | None = None
    errors: list[FieldError] | None = None


class Problem(Exception):
    """Raise to answer with a problem."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        title: str | None = None,
        errors: Sequence[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.title = title or _TITLES.get(status, "Error")
        self.errors = list(errors) if errors is not None else None
        self.headers = headers or {}
        self.extensions = extensions


def _request_id(request: Request) -> str | None:
    value = getattr(request.state, "request_id", None)
    return str(value) if value is not None else None


def problem_response(request: Request, problem: Problem) -> Response:
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + problem.code,
        "title": problem.title,
        "status": problem.status,
        "detail": problem.detail,
        "instance": request.url.path,
        "code": problem.code,
        "request_id": _request_id(request),
    }
    if problem.errors is not None:
        body["errors"] = problem.errors
    body.update({k: v for k, v in problem.extensions.items() if k not in body})
    return Response(
        content=orjson.dumps(body, default=str),
        status_code=problem.status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=problem.headers,
    )


def domain_problem(exc: DomainError) -> Problem:
    status = next((s for cls, s in _DOMAIN_STATUS if isinstance(exc, cls)), 409)
    errors = None
    field = exc.details.get("field")
    if status == 422:
        errors = [{"path": f"body.{field}" if field else "body", "message": exc.message, "type": exc.code}]
    problem = Problem(status, exc.code, exc.message, errors=errors)
    problem.extensions = {
        k: v for k, v in exc.details.items() if k != "field" and isinstance(v, str | int | list | type(None))
    }
    return problem


def _path(loc: Sequence[int | str]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "body"


def validation_problem(errors: Sequence[Any]) -> Problem:
    fields = []
    malformed = False
    for error in errors:
        kind = str(error.get("type", "invalid"))
        malformed = malformed or kind == "json_invalid"
        fields.append({"path": _path(tuple(error.get("loc", ()))), "message": str(error.get("msg", "")), "type": kind})
    if malformed:
        return Problem(400, "malformed_json", "the request body is not valid JSON", errors=fields)
    summary = "; ".join(f"{f['path']}: {f['message']}" for f in fields[:5])
    return Problem(422, "validation_failed", f"invalid request: {summary}", errors=fields)


async def handle_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Problem)
    return problem_response(request, exc)


async def handle_domain_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DomainError)
    return problem_response(request, domain_problem(exc))


async def handle_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return problem_response(request, validation_problem(exc.errors()))


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    codes = {404: "route_not_found", 405: "method_not_allowed"}
    detail = str(exc.detail) if exc.detail else _TITLES.get(exc.status_code, "error")
    if exc.status_code == 404:
        detail = f"no route {request.method} {request.url.path}"
    code = codes.get(exc.status_code, f"http_{exc.status_code}")
    return problem_response(request, Problem(exc.status_code, code, detail, headers=dict(exc.headers or {})))


async def handle_unavailable(request: Request, exc: Exception) -> Response:
    log.warning("dependency unavailable", path=request.url.path, error=f"{type(exc).__name__}: {exc}"[:300])
    return problem_response(
        request,
        Problem(
            503,
            "dependency_unavailable",
            "a database or broker this request needs is unavailable; retry later",
            headers={"Retry-After": "5"},
        ),
    )


async def handle_concurrent_write(request: Request, exc: Exception) -> Response:
    return problem_response(
        request,
        Problem(409, "concurrent_modification", "another command changed the same record at the same time; retry"),
    )


HANDLERS: list[tuple[type[Exception], Any]] = [
    (Problem, handle_problem),
    (DomainError, handle_domain_error),
    (RequestValidationError, handle_validation_error),
    (StarletteHTTPException, handle_http_exception),
    (RecordConflictError, handle_concurrent_write),
    (psycopg.OperationalError, handle_unavailable),
    (EventStoreUnavailable, handle_unavailable),
]
