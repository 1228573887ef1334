"""Programme settings: the numbers rules read (capacities, thresholds, protection days…), changed by events."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from api.http import bodies as b
from api.http.auth import Auth, authorize
from api.http.commands import command, execute
from api.http.problems import Problem
from api.http.reads import ReadPosition, consistent, json_response, services_of
from api.http.views import SettingsView

router = APIRouter(prefix="/v1", tags=["programme"], dependencies=[Depends(authorize)])


@router.get("/programme/settings", name="get_settings", response_model=SettingsView)
def get_settings(request: Request, principal: Auth, read: Annotated[ReadPosition, Depends(consistent())]) -> Response:
    """The programme settings in force (capacities, thresholds, protection days…)."""
    settings = services_of(request).program.settings()
    return json_response(request, {"settings": settings.to_dict()}, position=read.position)


@command(router, "/programme/settings", "change_settings")
def change_settings(request: Request, body: b.SettingsChange, principal: Auth) -> Response:
    """Change programme settings (an event; rules read the settings in force)."""
    program = services_of(request).program
    changes = body.changes.model_dump(exclude_none=True)
    if not changes:
        raise Problem(
            422,
            "validation_failed",
            "no setting to change",
            errors=[{"path": "body.changes", "message": "name at least one setting", "type": "empty"}],
        )
    return execute(
        request, lambda: program.change_settings(changes, actor=principal.actor, reason=body.reason, at=body.at)
    )
