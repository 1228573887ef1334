"""Shared mechanics of the read routes: read-your-writes, ETags, sorting and cursor pagination.

* ``?min_position=N`` waits (``?wait=`` seconds, default 5, at most 30) until the
  projections a route reads have applied every event up to ``N``; if they have
  not by then, the answer is a 504 problem with the lag. A position above the
  event store's head was never returned by a command: 422 at once.
* Every read answers with ``ETag`` (a digest of the body, ``as_of`` left out) and ``X-PRM-Position``
  (the position of the read models it read); ``If-None-Match`` with the same
  ETag gives ``304 Not Modified``.
* Lists take ``limit``, ``sort`` (``field`` or ``-field``) and an opaque
  ``cursor`` (the ``next_cursor`` of the previous page); a cursor is bound to the
  sort and filters it was issued for.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import orjson
from fastapi import Query, Request
from starlette.responses import Response

from api.http.problems import Problem
from api.http.services import ApiServices

__all__ = [
    "ALL_PROJECTIONS",
    "CONFLICTS",
    "DASHBOARDS",
    "LEDGER",
    "Page",
    "ReadPosition",
    "consistent",
    "json_response",
    "paginate",
    "services_of",
]

LEDGER = "ledger"
CONFLICTS = "conflicts"
DASHBOARDS = "dashboards"
ALL_PROJECTIONS = (LEDGER, CONFLICTS, DASHBOARDS)
MAX_LIMIT = 500


def services_of(request: Request) -> ApiServices:
    services: ApiServices = request.app.state.services
    return services


@dataclass(frozen=True)
class ReadPosition:
    """The position of the read models a route reads (after waiting for ``min_position``)."""

    position: int
    projections: tuple[str, ...]


def consistent(*projections: str) -> Callable[..., ReadPosition]:
    """A dependency that honours ``min_position`` for ``projections``."""
    names = tuple(projections)

    def dependency(
        request: Request,
        min_position: Annotated[
            int | None,
            Query(ge=0, le=2**53, description="Wait until the read models include this event-store position."),
        ] = None,
        wait: Annotated[
            float | None,
            Query(ge=0, le=30, description="Seconds to wait for min_position (default 5, at most 30)."),
        ] = None,
    ) -> ReadPosition:
        services = services_of(request)
        timeout = min(services.wait_max, services.wait_default if wait is None else wait)
        report = services.progress.report()
        if min_position is not None and min_position > report.head:
            # Every position a command returned is recorded already: this one was never returned.
            detail = f"position {min_position} is not recorded (the event store is at {report.head})"
            raise Problem(
                422,
                "position_not_recorded",
                detail,
                errors=[{"path": "query.min_position", "message": detail, "type": "position_not_recorded"}],
                head=report.head,
            )
        if not names:  # answered from the event store itself: always at its head
            return ReadPosition(report.head, names)
        if min_position is not None and report.reached(names) < min_position:
            report = services.progress.wait_for(min_position, names, timeout)
            reached = report.reached(names)
            if reached < min_position:
                raise Problem(
                    504,
                    "projection_lag",
                    f"the read models reached position {reached}, not {min_position}, within {timeout:g} s;"
                    " retry later or with a longer wait",
                    min_position=min_position,
                    reached=reached,
                    head=report.head,
                    lag=max(0, min_position - reached),
                    projections={name: report.positions.get(name, 0) for name in names},
                )
        return ReadPosition(report.reached(names), names)

    dependency.__name__ = f"consistent_{'_'.join(names) or 'store'}"
    return dependency


VOLATILE = frozenset({"as_of"})
"""Keys left out of the ETag: the instant "now" a read was evaluated at changes at every request,
while the figures it qualifies do not (when they do, the ETag changes with them)."""


def _stable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def _etag(payload: Any) -> str:
    digest = hashlib.sha256(orjson.dumps(_stable(payload), option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SORT_KEYS))
    return '"' + digest.hexdigest()[:32] + '"'


def _matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    candidates = [c.strip() for c in header.split(",")]
    return "*" in candidates or etag in candidates or f"W/{etag}" in candidates


def json_response(
    request: Request, payload: Any, *, position: int | None = None, status_code: int = 200, etag: bool = True
) -> Response:
    """Serialise ``payload`` (orjson), add ``ETag`` and ``X-PRM-Position``; 304 when the ETag matches."""
    body = orjson.dumps(payload, option=orjson.OPT_NON_STR_KEYS)
    headers: dict[str, str] = {}
    if position is not None:
        headers["X-PRM-Position"] = str(position)
    if etag:
        tag = _etag(payload)
        headers["ETag"] = tag
        headers["Cache-Control"] = "private, no-cache"
        if _matches(request.headers.get("if-none-match"), tag):
            return Response(status_code=304, headers=headers)
    return Response(content=body, status_code=status_code, media_type="application/json", headers=headers)


# ---------------------------------------------------------------- pagination


@dataclass(frozen=True)
class Page:
    items: list[dict[str, Any]]
    next_cursor: str | None
    total: int

    def to_dict(self, position: int | None = None) -> dict[str, Any]:
        return {"items": self.items, "next_cursor": self.next_cursor, "total": self.total, "position": position}


def _sort_key(value: Any, ident: str) -> tuple[int, Any, str]:
    return (0, "", ident) if value is None else (1, value, ident)


def _encode(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(data)).decode().rstrip("=")


def _decode(cursor: str) -> dict[str, Any]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = orjson.loads(raw)
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        raise _bad_cursor("the cursor is not one this API issued") from None
    if not isinstance(data, dict):
        raise _bad_cursor("the cursor is not one this API issued")
    return data


def _bad_cursor(detail: str) -> Problem:
    return Problem(
        422, "invalid_cursor", detail, errors=[{"path": "query.cursor", "message": detail, "type": "invalid_cursor"}]
    )


def fingerprint(filters: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(filters, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def paginate(
    items: Sequence[dict[str, Any]],
    *,
    sort: str,
    fields: dict[str, Callable[[dict[str, Any]], Any]],
    ident: Callable[[dict[str, Any]], str],
    limit: int,
    cursor: str | None,
    filters: dict[str, Any],
) -> Page:
    """Sort ``items`` by ``sort`` (``field`` / ``-field``, ties by id) and cut the page after ``cursor``."""
    descending = sort.startswith("-")
    name = sort.lstrip("-")
    if name not in fields:
        raise Problem(
            422,
            "validation_failed",
            f"cannot sort by {name!r}; sort by one of {', '.join(sorted(fields))}",
            errors=[{"path": "query.sort", "message": f"unknown sort field {name!r}", "type": "enum"}],
        )
    value_of = fields[name]
    keyed = sorted(((_sort_key(value_of(item), ident(item)), item) for item in items), key=lambda kv: kv[0])
    if descending:
        keyed.reverse()
    mark = fingerprint(filters)
    if cursor:
        data = _decode(cursor)
        if data.get("s") != sort or data.get("f") != mark:
            raise _bad_cursor("the cursor was issued for another sort or other filters")
        after = data.get("k")
        if not isinstance(after, list) or len(after) != 3:
            raise _bad_cursor("the cursor is not one this API issued")
        last = (after[0], after[1], after[2])
        try:
            keyed = [kv for kv in keyed if (kv[0] < last if descending else kv[0] > last)]
        except TypeError:
            raise _bad_cursor("the cursor is not one this API issued") from None
    page = keyed[: max(1, min(limit, MAX_LIMIT))]
    more = len(keyed) > len(page)
    next_cursor = _encode({"s": sort, "f": mark, "k": list(page[-1][0])}) if more and page else None
    return Page([item for _, item in page], next_cursor, len(items))
