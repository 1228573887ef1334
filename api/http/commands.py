"""Running a command for a route: call the application, catch the read side up, answer 202."""

from __future__ import annotations

import traceback
from collections.abc import Callable, Sequence
from typing import Any

import orjson
import structlog
from fastapi import APIRouter, Request
from fastapi.types import DecoratedCallable
from starlette.responses import Response

from api.http.problems import Problem
from api.http.reads import services_of
from api.http.views import CommandAccepted
from domain.application import CommandResult
from domain.errors import DomainError

__all__ = ["accepted_body", "command", "execute", "execute_many"]

log = structlog.get_logger("prm.api")


def command(router: APIRouter, path: str, name: str) -> Callable[[DecoratedCallable], DecoratedCallable]:
    """Declare a command endpoint: ``POST path``, answered ``202`` with a :class:`CommandAccepted`."""
    return router.post(
        path,
        name=name,
        status_code=202,
        response_model=CommandAccepted,
        responses={202: {"description": "Recorded; the read models follow (read with ?min_position=position)."}},
    )


def accepted_body(result: CommandResult) -> dict[str, Any]:
    return {
        "aggregate_id": str(result.aggregate_id),
        "business_id": result.business_id,
        "position": result.position,
        "events": list(result.events),
        "duplicate": result.duplicate,
        "details": result.details,
    }


def _record(request: Request, command: Callable[[], Any]) -> Any:
    try:
        return command()
    except DomainError:
        raise
    except ValueError as exc:  # a value the domain refused outside its own error types (naive time, empty id…)
        raise Problem(
            422, "invalid_input", str(exc), errors=[{"path": "body", "message": str(exc), "type": "invalid_input"}]
        ) from None


def _caught_up(request: Request, results: Sequence[CommandResult]) -> None:
    services = services_of(request)
    if services.after_command is None:
        return
    for result in results:
        try:
            services.after_command(result)
        except Exception as exc:  # the command is recorded: the read side lags, the caller still gets 202
            log.error(
                "read side failed to follow a command",
                business_id=result.business_id,
                error=f"{type(exc).__name__}: {exc}",
                traceback="".join(traceback.format_exception(exc)),
            )


def execute(request: Request, command: Callable[[], CommandResult]) -> Response:
    """Run ``command`` and answer ``202 Accepted`` with its :class:`CommandAccepted`."""
    result: CommandResult = _record(request, command)
    _caught_up(request, [result])
    return _accepted(accepted_body(result), result.position)


def execute_many(request: Request, command: Callable[[], list[CommandResult]]) -> Response:
    """Run a command that records several results (``expire_registrations``)."""
    results: list[CommandResult] = _record(request, command)
    _caught_up(request, results)
    position = max((r.position for r in results if r.position is not None), default=None)
    return _accepted({"expired": [accepted_body(r) for r in results], "position": position}, position)


def _accepted(body: dict[str, Any], position: int | None) -> Response:
    headers = {"X-PRM-Position": str(position)} if position is not None else {}
    return Response(
        content=orjson.dumps(body, default=str), status_code=202, media_type="application/json", headers=headers
    )
