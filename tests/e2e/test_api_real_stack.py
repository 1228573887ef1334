"""The HTTP API on the real stack: PostgreSQL event store, PostgreSQL read models, Kafka relay and workers.

* ``test_store_catch_up``: the API's own projector keeps PostgreSQL read models
  (``projection_source=local``; no broker): a command, then a query with its position.
* ``test_real_pipeline``: the full pipeline -- the relay (``consumers/relay.py``) publishes the event
  store to Kafka, a ``prm worker`` process (``consumers/worker.py``) applies it to the PostgreSQL read
  models, and the API (``projection_source=kafka``) waits for the position through the workers'
  checkpoints, the relay's tracked position and the partitions' end offsets.

Every wait is on a position or a condition with a deadline; nothing sleeps to let something happen.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg import sql

from api.bootstrap import build_api_services, build_program
from api.http.app import create_app
from api.http.services import ApiServices
from api.settings import Settings
from projections.metrics import Gauges

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PARTNER = {"partner_id": "P-E2E", "name": "End To End Co", "type": "reseller", "region": "VN", "size": "small"}


@pytest.fixture
def read_schema(unborn_schema: str) -> str:
    """The workers' read-model schema (created by them)."""
    return unborn_schema


def _settings(pg_url: str, pg_schema: str, read_schema: str, **extra: Any) -> Settings:
    return Settings(
        store="postgres",
        database_url=pg_url,
        database_schema=pg_schema,
        read_models="postgres",
        read_model_schema=read_schema,
        _env_file=None,  # type: ignore[call-arg]
        **extra,
    )


def _command_then_query(services: ApiServices, wait: float) -> dict[str, Any]:
    token = services.keys.create("admin", label="e2e@prm.test").token
    headers = {"Authorization": f"Bearer {token}"}
    with TestClient(create_app(services)) as client:
        response = client.post("/v1/partners", json=PARTNER, headers=headers)
        assert response.status_code == 202, response.text
        position = response.json()["position"]
        response = client.get(
            f"/v1/partners/{PARTNER['partner_id']}",
            params={"min_position": position, "wait": wait},
            headers=headers,
        )
        assert response.status_code == 200, response.text
        assert int(response.headers["x-prm-position"]) >= position
        detail: dict[str, Any] = response.json()
        approved = client.post(f"/v1/partners/{PARTNER['partner_id']}/approve", json={}, headers=headers).json()
        listed = client.get(
            "/v1/partners",
            params={"min_position": approved["position"], "wait": wait, "status": "onboarding"},
            headers=headers,
        )
        assert listed.status_code == 200, listed.text
        assert [p["partner_id"] for p in listed.json()["items"]] == [PARTNER["partner_id"]]
        detail["metrics"] = client.get("/metrics").text
        detail["ready"] = client.get("/readyz").json()
    return detail


def test_store_catch_up(pg_url: str, pg_schema: str, read_schema: str) -> None:
    settings = _settings(pg_url, pg_schema, read_schema, projection_source="local")
    services = build_api_services(settings, gauges=Gauges())
    try:
        detail = _command_then_query(services, wait=5)
        # the PostgreSQL key store: listed without secrets, revoked at once
        [key] = services.keys.list()
        assert key.role == "admin" and key.active
        services.keys.revoke(key.key_id)
        assert not services.keys.list()[0].active
    finally:
        services.close()
    assert detail["status"] == "applied" and detail["name"] == PARTNER["name"]
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute(
            sql.SQL("SELECT projection, source, sequence FROM {} ORDER BY projection").format(
                sql.Identifier(read_schema, "rm_checkpoints")
            )
        ).fetchall()
    assert {(p, s) for p, s, _ in rows} == {("conflicts", "store"), ("dashboards", "store"), ("ledger", "store")}


# ---------------------------------------------------------------- the real pipeline


@pytest.fixture
def topics(kafka_bootstrap: str) -> Iterator[Any]:
    from consumers.topics import TopicDefaults, admin_client, delete_topics, ensure_topics

    defaults = TopicDefaults(prefix=f"api-{uuid.uuid4().hex[:10]}.")
    names = defaults.names
    admin = admin_client(kafka_bootstrap, client_id="prm-test-api")
    try:
        ensure_topics(admin, [s for s in defaults.specs() if s.name in (names.events, names.program)])
        yield names
        delete_topics(admin, names.all())
    finally:
        admin.close()


def _relay(settings: Settings, kafka_bootstrap: str, topics: Any) -> tuple[Callable[[], None], Any]:
    from consumers.relay import Relay, relay_producer

    program = build_program(settings)
    assert settings.database_url is not None
    url = settings.database_url
    relay = Relay(
        program,
        lambda: relay_producer(kafka_bootstrap),
        lambda: psycopg.connect(url, connect_timeout=5),
        topics,
        poll_interval=0.05,
    )
    stop = threading.Event()
    thread = threading.Thread(target=relay.run_forever, args=(stop,), daemon=True, name="relay")
    thread.start()

    def close() -> None:
        stop.set()
        thread.join(timeout=30)
        relay.close()
        program.close()

    return close, relay


def _worker(pg_url: str, kafka_bootstrap: str, topics: Any, read_schema: str, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PRM_DATABASE_URL": pg_url,
        "PRM_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "PRM_LOG_FORMAT": "json",
    }
    env.pop("PRM_DATABASE_SCHEMA", None)
    args = [
        sys.executable,
        "-m",
        "api.cli",
        "worker",
        "--workers-id",
        f"test-api-{uuid.uuid4().hex[:10]}",
        "--topic-prefix",
        topics.prefix,
        "--schema",
        read_schema,
        "--projections",
        "ledger,conflicts,dashboards",
        "--session-timeout",
        "6",
    ]
    with log.open("ab") as out:
        return subprocess.Popen(args, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)


def test_real_pipeline(
    pg_url: str, pg_schema: str, read_schema: str, kafka_bootstrap: str, topics: Any, tmp_path: Path
) -> None:
    settings = _settings(
        pg_url,
        pg_schema,
        read_schema,
        projection_source="kafka",
        topic_prefix=topics.prefix,
        kafka_bootstrap=kafka_bootstrap,
    )
    services = build_api_services(settings, gauges=Gauges())  # creates the read-model tables
    stop_relay, relay = _relay(settings, kafka_bootstrap, topics)
    log = tmp_path / "worker.log"
    worker = _worker(pg_url, kafka_bootstrap, topics, read_schema, log)
    try:
        started = time.monotonic()
        detail = _command_then_query(services, wait=30)
        elapsed = time.monotonic() - started
        relay_lag = relay.lag()
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        stop_relay()
        services.close()
    assert detail["status"] == "applied", log.read_text(errors="replace")[-3000:]
    assert elapsed < 60
    assert relay_lag == 0
    # the relay's position and the projections' lag are exported by the API process
    assert "prm_relay_lag_events 0.0" in detail["metrics"]
    assert 'prm_projection_lag_events{projection="ledger"} 0.0' in detail["metrics"]
    assert detail["ready"]["status"] == "ready" and detail["ready"]["checks"]["broker"]["ok"]
