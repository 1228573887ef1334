"""Topics as code against the real broker: create, idempotence, drift, partition increase."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kafka.admin import ConfigResource, ConfigResourceType
from typer.testing import CliRunner

from consumers.topics import (
    CREATED,
    DRIFT,
    INCREASED,
    OK,
    TopicDefaults,
    TopicSpec,
    admin_client,
    delete_topics,
    ensure_topics,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def admin(kafka_bootstrap: str) -> Iterator[Any]:
    client = admin_client(kafka_bootstrap, client_id="prm-test-topics")
    yield client
    client.close()


@pytest.fixture
def prefix(admin: Any) -> Iterator[str]:
    """A unique topic prefix; every topic under it is deleted afterwards."""
    value = f"t-{uuid.uuid4().hex[:10]}."
    yield value
    delete_topics(admin, [n for n in admin.list_topics() if n.startswith(value)])


def described(admin: Any, names: list[str]) -> tuple[dict[str, int], dict[str, dict[str, str]]]:
    partitions = {t["name"]: len(t["partitions"]) for t in admin.describe_topics(names)}
    resources = [ConfigResource(ConfigResourceType.TOPIC, n, ["retention.ms", "cleanup.policy"]) for n in names]
    configs = admin.describe_configs(resources, config_filter="all")["topic"]
    return partitions, {n: {k: v["value"] for k, v in c.items()} for n, c in configs.items()}


def test_defaults_create_the_four_topics_with_their_partitions_and_configs(admin: Any, prefix: str) -> None:
    defaults = TopicDefaults(prefix=prefix)
    names = defaults.names

    first = ensure_topics(admin, defaults.specs())
    assert {t.name: t.status for t in first.topics} == dict.fromkeys(names.all(), CREATED)
    assert not first.unresolved_drift

    partitions, configs = described(admin, names.all())
    assert partitions == {names.sales: 6, names.events: 6, names.program: 1, names.deadletter: 3}
    for audit in (names.events, names.program, names.deadletter):
        assert configs[audit] == {"retention.ms": "-1", "cleanup.policy": "delete"}
    assert configs[names.sales] == {"retention.ms": str(30 * 24 * 3600 * 1000), "cleanup.policy": "delete"}

    # Idempotent: the second call changes nothing and reports every topic ok.
    second = ensure_topics(admin, defaults.specs())
    assert [(t.name, t.status, t.drift) for t in second.topics] == [(n, OK, ()) for n in names.all()]
    assert described(admin, names.all()) == (partitions, configs)


def test_drift_is_reported_not_repaired(admin: Any, prefix: str) -> None:
    name = f"{prefix}drifty"
    ensure_topics(admin, [TopicSpec(name, 2, {"retention.ms": "3600000", "cleanup.policy": "delete"})])

    wanted = TopicSpec(name, 4, {"retention.ms": "-1", "cleanup.policy": "delete"})
    report = ensure_topics(admin, [wanted])
    (state,) = report.topics
    assert state.status == DRIFT and report.unresolved_drift
    assert state.partitions == 2 and state.wanted_partitions == 4
    assert "partitions 2 < 4" in state.drift
    assert "retention.ms 3600000 != -1" in state.drift
    # Nothing was changed behind our back.
    assert described(admin, [name]) == ({name: 2}, {name: {"retention.ms": "3600000", "cleanup.policy": "delete"}})

    # More partitions than wanted is fine, except where ordering needs an exact count.
    assert ensure_topics(admin, [TopicSpec(name, 1, {"retention.ms": "3600000"})]).topics[0].status == OK
    exact = ensure_topics(admin, [TopicSpec(name, 1, exact_partitions=True)]).topics[0]
    assert exact.status == DRIFT and exact.drift[0].startswith("partitions 2 != 1")


def test_partitions_increase_only_on_request(admin: Any, prefix: str) -> None:
    name = f"{prefix}growing"
    spec = TopicSpec(name, 2, {"retention.ms": "-1"})
    ensure_topics(admin, [spec])
    bigger = TopicSpec(name, 5, {"retention.ms": "-1"})

    assert ensure_topics(admin, [bigger]).topics[0].status == DRIFT
    assert described(admin, [name])[0] == {name: 2}

    grown = ensure_topics(admin, [bigger], increase_partitions=True)
    assert grown.topics[0].status == INCREASED and not grown.unresolved_drift
    assert described(admin, [name])[0] == {name: 5}
    assert ensure_topics(admin, [bigger], increase_partitions=True).topics[0].status == OK

    # Config drift is never "resolved" by the flag.
    other = ensure_topics(admin, [TopicSpec(name, 5, {"retention.ms": "86400000"})], increase_partitions=True)
    assert other.topics[0].status == DRIFT


def test_defaults_from_a_mapping() -> None:
    defaults = TopicDefaults.from_mapping({"prefix": "x.", "events_partitions": "12", "sales_retention_ms": None})
    assert defaults.events_partitions == 12 and defaults.sales_retention_ms == TopicDefaults().sales_retention_ms
    specs = {s.name: s for s in defaults.specs()}
    assert specs["x.prm.events.v1"].partitions == 12
    assert specs["x.prm.program.v1"].exact_partitions
    with pytest.raises(ValueError, match="unknown topic setting"):
        TopicDefaults.from_mapping({"event_partitions": 3})
    with pytest.raises(ValueError, match="whole number"):
        TopicDefaults.from_mapping({"events_partitions": "many"})
    with pytest.raises(ValueError):
        TopicDefaults.from_mapping({"program_partitions": 0})


def test_cli_creates_then_reports_drift_with_exit_code(
    admin: Any, prefix: str, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from api.cli import app

    monkeypatch.setenv("PRM_KAFKA_BOOTSTRAP", kafka_bootstrap)
    runner = CliRunner()
    created = runner.invoke(app, ["kafka-ensure-topics", "--json", "--topic-prefix", prefix])
    assert created.exit_code == 0, created.output
    assert {t["status"] for t in json.loads(created.output)["topics"]} == {CREATED}

    # Shrink nothing, but give the events topic a retention that differs from the contract.
    events = TopicDefaults(prefix=prefix).names.events
    admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, events, {"retention.ms": "86400000"})])
    # The change reaches the broker's view of the topic asynchronously (KRaft metadata log): wait for it.
    deadline = time.monotonic() + 15
    while described(admin, [events])[1][events]["retention.ms"] != "86400000":
        assert time.monotonic() < deadline, "the altered retention never became visible"
        time.sleep(0.05)
    drifted = runner.invoke(app, ["kafka-ensure-topics", "--json", "--topic-prefix", prefix])
    assert drifted.exit_code == 1, drifted.output
    rows = {t["topic"]: t for t in json.loads(drifted.output)["topics"]}
    assert rows[events]["status"] == DRIFT and rows[events]["drift"] == ["retention.ms 86400000 != -1"]
    table = runner.invoke(app, ["kafka-ensure-topics", "--topic-prefix", prefix])
    assert table.exit_code == 1 and "drift" in table.output
