"""The relay: every event recorded in the event store, published on Kafka, in order, at least once.

It follows the ``PartnerProgram`` notification log from the last published
position, publishes each event as its CloudEvents envelope (structured mode,
``content-type: application/cloudevents+json``), waits for the broker's acks on
the whole batch, and only then records the batch's last position in the tracking
table ``prm_relay_position`` (same database and schema as the event store).

Routing (``route``): events of the ``plan`` and ``program`` aggregates go to
``prm.program.v1`` keyed by subject; every other event goes to ``prm.events.v1``
keyed by its partner id, or by ``direct`` when it concerns no partner (direct
sales and CRM opportunities).

Ordering, per key, equals event-store order:

* one idempotent producer (``acks=all``). kafka-python 3.0 then *mutes* a
  partition while a batch to it is in flight (``guarantee_message_order``), so a
  partition never has two batches in flight and retries cannot reorder;
* a failed batch would still let the *next* batch of that partition go out: a
  batch that expires (``delivery_timeout_ms``) or is lost to an epoch bump (KIP-360)
  is failed, the partition unmuted, and the queued batches are sent. (A
  non-retriable error such as MESSAGE_TOO_LARGE instead makes kafka-python's
  idempotent producer fatal, failing everything queued.) So the first failure
  force-closes the producer from its errback, in the I/O thread, before that
  thread drains again: on every partition, what reached Kafka in one attempt is a
  prefix of what was sent. Re-publishing from the recorded position then keeps the
  first copy of each event in order, and a new producer is used for the retry;
* an event is sent only after every earlier programme-topic event is acked
  (flush), so a consumer that sees sequence ``s`` can rely on every programme
  event below ``s`` being on Kafka already.

Failures of the broker or the database are logged and retried with capped
exponential back-off; a position is never skipped. After a crash, the events
after the recorded position are published again with the same CloudEvents ids.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import kafka.errors as kafka_errors
import psycopg
import structlog
from eventsourcing.persistence import DatetimeAsISO, JSONTranscoder, Mapper, Notification
from eventsourcing.utils import resolve_topic
from kafka import KafkaProducer
from psycopg import sql

from consumers.topics import TopicNames
from domain.application import DateAsISO, PartnerProgram
from projections.envelope import CONTENT_TYPE, EventEnvelope, envelope_of, envelope_of_stored

PROGRAM_KINDS = frozenset({"plan", "program"})
DIRECT_KEY = "direct"
HEADERS: list[tuple[str, bytes]] = [("content-type", CONTENT_TYPE.encode())]
TRACKING_TABLE = "prm_relay_position"
DEFAULT_RELAY_NAME = "prm-events"

ProducerFactory = Callable[[], Any]
ConnFactory = Callable[[], "psycopg.Connection[Any]"]

log = structlog.get_logger("prm.relay")


@dataclass(frozen=True)
class Route:
    topic: str
    key: str


def route(envelope: EventEnvelope, topics: TopicNames) -> Route:
    """Where an event goes: the programme topic (by subject) or the events topic (by partner, or ``direct``)."""
    if envelope.kind in PROGRAM_KINDS:
        return Route(topics.program, envelope.subject)
    if envelope.partner_id:
        return Route(topics.events, envelope.partner_id)
    if envelope.kind in ("sale", "opportunity"):
        return Route(topics.events, DIRECT_KEY)
    # No aggregate of the domain records partner-less events of another kind today; if one
    # ever does, it concerns the whole programme (events.md): never stall the relay on it.
    return Route(topics.program, envelope.subject)


def relay_producer(bootstrap: str, **overrides: Any) -> Any:
    """The producer the relay's ordering argument relies on.

    ``enable_idempotence=True`` is passed explicitly, so kafka-python *raises* on a
    conflicting setting instead of silently turning idempotence off. ``api_version``
    is left unset (a value would cap the negotiated protocol versions).
    """
    config: dict[str, Any] = {
        "bootstrap_servers": [s.strip() for s in bootstrap.split(",") if s.strip()],
        "client_id": "prm-relay",
        "enable_idempotence": True,
        "acks": "all",
        "max_in_flight_requests_per_connection": 5,
        "linger_ms": 5,
        "batch_size": 128 * 1024,
        "request_timeout_ms": 15_000,
        "delivery_timeout_ms": 30_000,
        "max_block_ms": 15_000,
    }
    config.update(overrides)
    return KafkaProducer(**config)


def reads_stored_json(mapper: Mapper[Any]) -> bool:
    """Whether ``envelope_of_stored`` applies to this mapper's stored events.

    It does for eventsourcing's own ``JSONTranscoder`` with no cipher and no compressor, whose
    ``datetime_iso`` and ``date_iso`` names decode with ``datetime.fromisoformat`` and
    ``date.fromisoformat`` (eventsourcing's ``DatetimeAsISO`` and the application's ``DateAsISO``).
    """
    transcoder = getattr(mapper, "transcoder", None)
    if type(transcoder) is not JSONTranscoder or getattr(mapper, "cipher", None) or getattr(mapper, "compressor", None):
        return False
    names = transcoder.names
    return (
        type(names.get("datetime_iso")) is DatetimeAsISO
        and type(names.get("date_iso")) is DateAsISO
        and names["datetime_iso"].type is datetime
    )


class PublishError(RuntimeError):
    """A batch was not fully acknowledged by the broker; nothing after it was recorded."""


class ProducerLost(RuntimeError):
    """The relay had to close its producer and was given no factory to build another."""


class RelayLocked(RuntimeError):
    """Another relay with the same name holds the tracking lock (standby)."""


class PositionTracker:
    """The last published position of a relay, in ``<schema>.prm_relay_position``.

    Holds one connection with a session advisory lock per (schema, relay name):
    a second relay of the same name stays on standby instead of doubling the traffic.
    """

    def __init__(self, conn_factory: ConnFactory, relay_name: str, schema: str | None = None) -> None:
        self._conn_factory = conn_factory
        self.relay_name = relay_name
        self.schema = schema or "public"
        self._table = sql.Identifier(self.schema, TRACKING_TABLE)
        self._conn: psycopg.Connection[Any] | None = None

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        conn = self._conn_factory()
        try:
            conn.autocommit = True
            locked = conn.execute(
                "SELECT pg_try_advisory_lock(hashtext(%s))", (f"{self.schema}.{TRACKING_TABLE}.{self.relay_name}",)
            ).fetchone()
            if not locked or not locked[0]:
                raise RelayLocked(f"relay {self.relay_name!r} is already running on schema {self.schema!r}")
            # Two relays of different names may create the table at the same time.
            with contextlib.suppress(psycopg.errors.UniqueViolation):
                conn.execute(
                    sql.SQL(
                        "CREATE TABLE IF NOT EXISTS {} ("
                        " relay_name text PRIMARY KEY,"
                        " position bigint NOT NULL,"
                        " updated_at timestamptz NOT NULL DEFAULT now())"
                    ).format(self._table)
                )
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def load(self) -> int:
        row = (
            self._connection()
            .execute(sql.SQL("SELECT position FROM {} WHERE relay_name = %s").format(self._table), (self.relay_name,))
            .fetchone()
        )
        return int(row[0]) if row else 0

    def save(self, position: int) -> None:
        """Record ``position`` (never moves backwards)."""
        self._connection().execute(
            sql.SQL(
                "INSERT INTO {0} AS t (relay_name, position, updated_at) VALUES (%s, %s, now())"
                " ON CONFLICT (relay_name) DO UPDATE"
                " SET position = GREATEST(t.position, EXCLUDED.position), updated_at = now()"
            ).format(self._table),
            (self.relay_name, position),
        )

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None


class Relay:
    """Publishes the event store's notification log to Kafka; see the module docstring.

    ``producer`` is a ``KafkaProducer`` or, better, a zero-argument factory of them
    (see ``relay_producer``): after a failed send the relay force-closes its producer
    and needs a new one. ``conn_factory`` opens a psycopg connection to the event
    store's database; ``schema`` defaults to the event store's schema.
    """

    def __init__(
        self,
        program: PartnerProgram,
        producer: Any,
        conn_factory: ConnFactory,
        topics: TopicNames,
        batch_size: int = 500,
        poll_interval: float = 0.2,
        *,
        relay_name: str = DEFAULT_RELAY_NAME,
        schema: str | None = None,
        progress_interval: float = 30.0,
        ack_timeout: float = 60.0,
        backoff_initial: float = 0.2,
        backoff_max: float = 30.0,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.program = program
        self.topics = topics
        self.batch_size = min(batch_size, program.log_section_size)
        self.poll_interval = poll_interval
        self.progress_interval = progress_interval
        self.ack_timeout = ack_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        if callable(producer):
            self._producer_factory: ProducerFactory | None = producer
            self._producer: Any = None
        else:
            self._producer_factory = None
            self._producer = producer
        if schema is None:
            schema = getattr(getattr(program.recorder, "datastore", None), "schema", None)
        self.tracker = PositionTracker(conn_factory, relay_name, schema)
        self.relay_name = relay_name
        self._published: int | None = None  # acknowledged by the broker
        self._recorded: int | None = None  # written to the tracking table
        self._reload = True  # (re)connected: read the tracking table again
        self._log = log.bind(relay=relay_name, schema=self.tracker.schema)
        self._last_progress = time.monotonic()
        self._since_progress = 0
        self._from_state = reads_stored_json(program.mapper)

    # ---- state -------------------------------------------------------------
    @property
    def published_position(self) -> int:
        """The last position acknowledged by the broker (loads the recorded one first)."""
        if self._published is None or self._reload:
            recorded = self.tracker.load()
            # Another relay of this name may have published further while this one waited.
            self._published = max(self._published or 0, recorded)
            self._recorded = recorded
            self._reload = False
            self._log.info("relay.resumed", position=self._published, recorded=recorded)
        return self._published

    def lag(self) -> int:
        """Events recorded in the store and not yet published."""
        return max(self.program.max_position() - self.published_position, 0)

    # ---- one step ----------------------------------------------------------
    def run_once(self) -> int:
        """Publish the next batch (at most ``batch_size`` events); returns how many were published."""
        start = self.published_position
        if self._recorded is not None and self._recorded < start:
            self.tracker.save(start)  # an earlier record failed after the broker had acked
            self._recorded = start
        notifications = self.program.notification_log.select(start=start + 1, limit=self.batch_size)
        if not notifications:
            return 0
        started = time.monotonic()
        envelopes = [self._envelope(n) for n in notifications]
        self._publish(envelopes)
        last = envelopes[-1].sequence
        self._published = last
        self.tracker.save(last)
        self._recorded = last
        self._since_progress += len(envelopes)
        try:
            lag: int | None = max(self.program.max_position() - last, 0)
        except Exception:  # the batch is published and recorded: a lag we cannot read is no failure
            lag = None
        self._log.info(
            "relay.batch_published",
            events=len(envelopes),
            first=envelopes[0].sequence,
            last=last,
            lag=lag,
            ms=round((time.monotonic() - started) * 1000, 1),
        )
        return len(envelopes)

    def _envelope(self, notification: Notification) -> EventEnvelope:
        """The event's envelope, from its stored JSON when that gives the same bytes (``envelope_of_stored``)."""
        if self._from_state and isinstance(notification.originator_id, UUID):
            envelope = envelope_of_stored(
                resolve_topic(notification.topic),
                notification.originator_id,
                notification.originator_version,
                notification.state,
                notification.id,
            )
            if envelope is not None:
                return envelope
        return envelope_of(self.program.mapper.to_domain_event(notification), notification.id)

    def _publish(self, envelopes: Sequence[EventEnvelope]) -> None:
        producer = self._current_producer()
        failures: list[BaseException] = []

        def on_error(exc: BaseException) -> None:
            # Runs in the producer's I/O thread, before it drains any partition again.
            if not failures:
                failures.append(exc)
                halt_producer(producer)

        futures: list[Any] = []
        acked = 0  # futures[:acked] are known to be acked
        program_unacked = False
        try:
            for envelope in envelopes:
                if program_unacked:
                    self._await_acks(producer, futures[acked:], failures)
                    acked = len(futures)
                    program_unacked = False
                target = route(envelope, self.topics)
                future = producer.send(target.topic, value=envelope.to_json(), key=target.key.encode(), headers=HEADERS)
                future.add_errback(on_error)
                futures.append(future)
                program_unacked = target.topic == self.topics.program
            self._await_acks(producer, futures[acked:], failures)
        except Exception as exc:
            self._discard_producer(producer)
            if isinstance(exc, PublishError):
                raise
            raise PublishError(f"{type(exc).__name__}: {exc}") from exc

    def _await_acks(self, producer: Any, futures: list[Any], failures: list[BaseException]) -> None:
        """Flush, then check every record's future: all acked, or ``PublishError``."""
        deadline = time.monotonic() + self.ack_timeout
        # kafka-python 3.0.12: when a batch is split (MESSAGE_TOO_LARGE from a topic whose
        # max.message.bytes is below the batch) flush() raises "Future not done" at once;
        # the records' futures follow the split batches, so wait on them instead.
        with contextlib.suppress(kafka_errors.UnknownError):
            producer.flush(timeout=self.ack_timeout)
        for future in futures:
            if failures:
                break
            try:
                future.get(timeout=max(deadline - time.monotonic(), 0.001))
            except Exception as exc:  # the record's own failure, or no ack in time
                failures.append(exc)
        if failures:
            first = failures[0]
            raise PublishError(f"the broker did not acknowledge the batch: {type(first).__name__}: {first}") from first

    def _current_producer(self) -> Any:
        if self._producer is None:
            if self._producer_factory is None:
                raise ProducerLost("the relay's producer was closed after a failure and there is no producer factory")
            self._producer = self._producer_factory()
        return self._producer

    def _discard_producer(self, producer: Any) -> None:
        """Stop ``producer`` sending anything more, and drop it: the next attempt starts a new one."""
        halt_producer(producer)
        try:
            producer.close(timeout=5)
        except Exception as exc:
            self._log.debug("relay.producer_close_failed", error=str(exc))
        if self._producer is producer:
            self._producer = None

    # ---- the loop ----------------------------------------------------------
    def run_forever(self, stop_event: threading.Event) -> None:
        """Publish until ``stop_event`` is set; infrastructure failures are retried with back-off."""
        backoff = self.backoff_initial
        failures = 0
        self._log.info("relay.started", batch_size=self.batch_size, topics=[self.topics.events, self.topics.program])
        try:
            while not stop_event.is_set():
                try:
                    published = self.run_once()
                except Exception as exc:
                    failures += 1
                    level = self._log.info if isinstance(exc, RelayLocked) else self._log.warning
                    level(
                        "relay.retry",
                        error=f"{type(exc).__name__}: {exc}",
                        attempt=failures,
                        backoff_s=round(backoff, 2),
                        position=self._published,
                        exc_info=failures == 1 and not isinstance(exc, RelayLocked | PublishError),
                    )
                    if isinstance(exc, ProducerLost):
                        raise
                    self._reset_connections()
                    stop_event.wait(backoff)
                    backoff = min(backoff * 2, self.backoff_max)
                    continue
                if failures:
                    self._log.info("relay.recovered", after_attempts=failures, position=self._published)
                failures = 0
                backoff = self.backoff_initial
                self._maybe_progress()
                if published < self.batch_size:
                    stop_event.wait(self.poll_interval)
        finally:
            self.close()
            self._log.info("relay.stopped", position=self._published)

    def _maybe_progress(self) -> None:
        now = time.monotonic()
        elapsed = now - self._last_progress
        if elapsed < self.progress_interval:
            return
        try:
            lag = self.lag()
        except Exception as exc:
            self._log.warning("relay.lag_unknown", error=str(exc))
            return
        self._log.info(
            "relay.progress",
            position=self._published,
            lag=lag,
            events_per_s=round(self._since_progress / elapsed, 1),
        )
        self._last_progress = now
        self._since_progress = 0

    def _reset_connections(self) -> None:
        """After a failure: reconnect to the tracking table (and re-read it) on the next attempt."""
        self.tracker.close()
        self._reload = True

    def close(self) -> None:
        """Flush and close the producer, close the tracking connection."""
        producer, self._producer = self._producer, None
        if producer is not None and self._producer_factory is not None:
            try:
                producer.close(timeout=10)
            except Exception as exc:
                self._log.warning("relay.producer_close_failed", error=str(exc))
        self.tracker.close()


def halt_producer(producer: Any) -> None:
    """Force-close a kafka-python producer so that nothing still buffered reaches the broker.

    ``KafkaProducer.close(timeout=0)`` cannot do it from a callback in kafka-python
    3.0.12: it flushes first and ``flush(0)`` raises while batches are pending. The
    sender's ``force_close`` stops its loop and fails every incomplete batch.
    """
    sender = getattr(producer, "_sender", None)
    force_close = getattr(sender, "force_close", None)
    if callable(force_close):
        force_close()
