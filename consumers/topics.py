"""Kafka topics as code: names, partitions and configs, and an idempotent ``ensure_topics``.

``ensure_topics`` creates what is missing and *reports* drift on what exists
(fewer partitions than wanted, a different retention or cleanup policy); it never
silently changes an existing topic. The only change it makes on request is adding
partitions (``increase_partitions=True``), because that cannot lose data — though
it does move keys to other partitions, so per-key order across the change holds
only for keys whose partition did not change.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import kafka.errors as kafka_errors
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType

SALES = "prm.sales.v1"
EVENTS = "prm.events.v1"
PROGRAM = "prm.program.v1"
DEADLETTER = "prm.deadletter.v1"

INFINITE = -1
DAY_MS = 24 * 3600 * 1000

# Status of one topic in an ``EnsureReport``.
CREATED = "created"
OK = "ok"
INCREASED = "increased"
DRIFT = "drift"


@dataclass(frozen=True)
class TopicNames:
    """The four topic names, optionally under a ``prefix`` (tests and side-by-side environments)."""

    prefix: str = ""

    @property
    def sales(self) -> str:
        return f"{self.prefix}{SALES}"

    @property
    def events(self) -> str:
        return f"{self.prefix}{EVENTS}"

    @property
    def program(self) -> str:
        return f"{self.prefix}{PROGRAM}"

    @property
    def deadletter(self) -> str:
        return f"{self.prefix}{DEADLETTER}"

    def all(self) -> list[str]:
        return [self.sales, self.events, self.program, self.deadletter]


@dataclass(frozen=True)
class TopicSpec:
    """What one topic should look like.

    ``exact_partitions``: more partitions than wanted is drift too (the programme
    topic has one partition so that programme-wide events stay totally ordered).
    ``replication_factor=-1`` leaves it to the broker (``default.replication.factor``).
    """

    name: str
    partitions: int
    configs: Mapping[str, str] = field(default_factory=dict)
    replication_factor: int = -1
    exact_partitions: bool = False

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a topic needs a name")
        if self.partitions < 1:
            raise ValueError(f"{self.name}: partitions must be >= 1, not {self.partitions}")
        if self.replication_factor == 0 or self.replication_factor < -1:
            raise ValueError(f"{self.name}: replication_factor must be >= 1 or -1 (broker default)")


@dataclass(frozen=True)
class TopicDefaults:
    """The product's topic settings; ``from_mapping`` lets the composition root override any of them."""

    prefix: str = ""
    sales_partitions: int = 6
    events_partitions: int = 6
    program_partitions: int = 1
    deadletter_partitions: int = 3
    sales_retention_ms: int = 30 * DAY_MS
    replication_factor: int = -1

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name.endswith("_partitions") and getattr(self, f.name) < 1:
                raise ValueError(f"{f.name} must be >= 1")
        if self.sales_retention_ms < INFINITE or self.sales_retention_ms == 0:
            raise ValueError("sales_retention_ms must be positive, or -1 for infinite retention")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> TopicDefaults:
        """Defaults overridden by ``values`` (field name -> value; ints may be given as strings; ``None`` = default)."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown topic setting(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        kwargs: dict[str, Any] = {}
        for name, value in values.items():
            if value is None:
                continue
            if name == "prefix":
                kwargs[name] = str(value)
                continue
            try:
                kwargs[name] = int(value)
            except (TypeError, ValueError):
                raise ValueError(f"topic setting {name} must be a whole number, not {value!r}") from None
        return cls(**kwargs)

    @property
    def names(self) -> TopicNames:
        return TopicNames(self.prefix)

    def specs(self) -> list[TopicSpec]:
        names = self.names
        audit = {"retention.ms": str(INFINITE), "cleanup.policy": "delete"}
        rf = self.replication_factor
        return [
            TopicSpec(
                names.sales,
                self.sales_partitions,
                {"retention.ms": str(self.sales_retention_ms), "cleanup.policy": "delete"},
                rf,
            ),
            TopicSpec(names.events, self.events_partitions, audit, rf),
            TopicSpec(names.program, self.program_partitions, audit, rf, exact_partitions=True),
            TopicSpec(names.deadletter, self.deadletter_partitions, audit, rf),
        ]


@dataclass(frozen=True)
class TopicState:
    """The outcome for one topic: ``status`` is created, ok, increased or drift."""

    name: str
    status: str
    partitions: int
    wanted_partitions: int
    configs: dict[str, str]
    drift: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "topic": self.name,
            "status": self.status,
            "partitions": self.partitions,
            "wanted_partitions": self.wanted_partitions,
            "configs": dict(self.configs),
            "drift": list(self.drift),
        }


@dataclass(frozen=True)
class EnsureReport:
    topics: tuple[TopicState, ...]

    @property
    def created(self) -> list[str]:
        return [t.name for t in self.topics if t.status == CREATED]

    @property
    def drifted(self) -> list[TopicState]:
        return [t for t in self.topics if t.status == DRIFT]

    @property
    def unresolved_drift(self) -> bool:
        return bool(self.drifted)

    def by_name(self) -> dict[str, TopicState]:
        return {t.name: t for t in self.topics}

    def to_dict(self) -> dict[str, Any]:
        return {"topics": [t.to_dict() for t in self.topics], "unresolved_drift": self.unresolved_drift}


class TopicError(RuntimeError):
    """A topic could not be created, described or changed."""


def admin_client(bootstrap: str, **overrides: Any) -> KafkaAdminClient:
    """An admin client for ``bootstrap`` (``host:port[,host:port…]``).

    ``api_version`` is left unset on purpose: kafka-python negotiates versions with
    the broker, and a fixed value would cap them.
    """
    config: dict[str, Any] = {
        "bootstrap_servers": [s.strip() for s in bootstrap.split(",") if s.strip()],
        "client_id": "prm-admin",
        "request_timeout_ms": 30_000,
    }
    config.update(overrides)
    return KafkaAdminClient(**config)


def ensure_topics(
    admin: KafkaAdminClient,
    specs: Sequence[TopicSpec],
    *,
    increase_partitions: bool = False,
    timeout_ms: int = 30_000,
) -> EnsureReport:
    """Create missing topics, report drift on existing ones; idempotent.

    Existing topics are never reconfigured. With ``increase_partitions`` a topic with
    fewer partitions than wanted gets more (status ``increased``); otherwise that is drift.
    """
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError("topic specs name the same topic twice")
    existing = _partition_counts(admin, names)
    missing = [s for s in specs if s.name not in existing]
    created: set[str] = set()
    if missing:
        request = {
            s.name: {
                "num_partitions": s.partitions,
                "replication_factor": s.replication_factor,
                "configs": dict(s.configs),
            }
            for s in missing
        }
        response = admin.create_topics(request, timeout_ms=timeout_ms, raise_errors=False)
        for result in response.get("topics", []):
            error = kafka_errors.for_code(result.get("error_code", 0))
            if error is kafka_errors.NoError:
                created.add(result["name"])
            elif error is not kafka_errors.TopicAlreadyExistsError:  # another process won the race: fine
                raise TopicError(
                    f"cannot create topic {result['name']}: {error.__name__} {result.get('error_message')}"
                )
        admin.wait_for_topics([s.name for s in missing], timeout_ms=timeout_ms)
        existing = _partition_counts(admin, names)

    increased: set[str] = set()
    if increase_partitions:
        grow = {s.name: s.partitions for s in specs if s.name not in created and existing[s.name] < s.partitions}
        if grow:
            response = admin.create_partitions(grow, timeout_ms=timeout_ms, raise_errors=False)
            for result in response.results:
                error = kafka_errors.for_code(result.error_code)
                if error is not kafka_errors.NoError:
                    raise TopicError(f"cannot add partitions to {result.name}: {error.__name__} {result.error_message}")
                increased.add(result.name)
            existing = _wait_for_partitions(admin, names, grow, timeout_ms)

    configs = _topic_configs(admin, specs)
    states = []
    for spec in specs:
        partitions = existing[spec.name]
        actual = configs.get(spec.name, {})
        drift: list[str] = []
        if partitions < spec.partitions:
            drift.append(f"partitions {partitions} < {spec.partitions}")
        elif spec.exact_partitions and partitions != spec.partitions:
            drift.append(f"partitions {partitions} != {spec.partitions} (ordering needs exactly {spec.partitions})")
        for key, wanted in spec.configs.items():
            if actual.get(key) != wanted:
                drift.append(f"{key} {actual.get(key)} != {wanted}")
        if drift:
            status = DRIFT
        elif spec.name in created:
            status = CREATED
        elif spec.name in increased:
            status = INCREASED
        else:
            status = OK
        states.append(TopicState(spec.name, status, partitions, spec.partitions, actual, tuple(drift)))
    return EnsureReport(tuple(states))


def delete_topics(admin: KafkaAdminClient, names: Iterable[str], timeout_ms: int = 30_000) -> None:
    """Delete the topics that exist among ``names`` (tests and tear-down)."""
    present = list(_partition_counts(admin, list(names)))
    if present:
        admin.delete_topics(present, timeout_ms=timeout_ms, raise_errors=False)


def _partition_counts(admin: KafkaAdminClient, names: list[str]) -> dict[str, int]:
    """Partition count of each topic of ``names`` that exists."""
    counts: dict[str, int] = {}
    for topic in admin.describe_topics(names):
        error = kafka_errors.for_code(topic.get("error_code", 0))
        if error is kafka_errors.UnknownTopicOrPartitionError:
            continue
        if error is not kafka_errors.NoError:
            raise TopicError(f"cannot describe topic {topic.get('name')}: {error.__name__}")
        counts[topic["name"]] = len(topic.get("partitions") or [])
    return counts


def _wait_for_partitions(
    admin: KafkaAdminClient, names: list[str], wanted: Mapping[str, int], timeout_ms: int
) -> dict[str, int]:
    """New partitions reach the metadata asynchronously (KRaft): poll until they are there, with leaders."""
    deadline = time.monotonic() + timeout_ms / 1000
    while True:
        counts = _partition_counts(admin, names)
        if all(counts.get(name, 0) >= count for name, count in wanted.items()):
            admin.wait_for_topics(sorted(wanted), timeout_ms=timeout_ms)
            return counts
        if time.monotonic() >= deadline:
            raise TopicError(f"new partitions not visible after {timeout_ms} ms: {dict(wanted)}")
        time.sleep(0.05)


def _topic_configs(admin: KafkaAdminClient, specs: Sequence[TopicSpec]) -> dict[str, dict[str, str]]:
    """The effective values (whatever their source) of the configs each spec cares about."""
    resources = [ConfigResource(ConfigResourceType.TOPIC, s.name, sorted(s.configs)) for s in specs if s.configs]
    if not resources:
        return {}
    described = admin.describe_configs(resources, config_filter="all").get("topic", {})
    return {name: {key: str(entry.get("value")) for key, entry in values.items()} for name, values in described.items()}
