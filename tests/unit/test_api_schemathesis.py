"""Property-based tests of the whole API from its OpenAPI document (schemathesis 4).

Every operation is called with generated data (valid and invalid) with an admin key, on the seeded
embedded world: no answer may be a server error, and every answer must match the documented schema
(problem+json for the errors).
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from api.http.app import create_app
from tests.unit.api_world import World, build_services, seed

MAX_EXAMPLES = 25

# The schema is loaded when the module is collected (schemathesis parametrizes from it), so the app
# exists from then on; its data is seeded by the module fixture below, before the first case runs.
_DIRECTORY = Path(tempfile.mkdtemp(prefix="prm-schemathesis-"))
atexit.register(shutil.rmtree, _DIRECTORY, True)
_SERVICES = build_services(_DIRECTORY)
APP = create_app(_SERVICES)
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with TestClient(APP, raise_server_exceptions=False) as client:
        seeded = World(client, _SERVICES)
        seed(seeded)
        yield seeded
    _SERVICES.close()


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture],
)
def test_api_conforms_to_its_schema(case: Any, world: World) -> None:
    case.call_and_validate(
        headers=world.headers("admin"),
        checks=[not_a_server_error, response_schema_conformance],
    )
