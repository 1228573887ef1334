"""Operational gauges every component can set: projection lag, relay lag, dead letters.

A small registry shared by the processes of the product. Each process exposes
its own ``/metrics`` (the API serves it over HTTP; a worker or the relay can
call ``prometheus_client.start_http_server(port, registry=gauges().registry)``),
and whichever process knows a figure sets it:

* ``prm_projection_lag_events{projection}`` -- event-store positions recorded but
  not yet applied by that projection (``head - applied``);
* ``prm_projection_position{projection}`` -- the position the projection reached;
* ``prm_event_store_position`` -- the highest position recorded in the event store;
* ``prm_relay_lag_events`` -- positions recorded but not yet published to Kafka;
* ``prm_deadletter_messages`` -- inbound messages sent to the dead-letter topic so far;
* ``prm_http_request_duration_seconds{method,route,status}`` -- the HTTP API's latency by route template.

Nothing is created at import time: :func:`gauges` builds the process-wide set on
first use; tests build their own :class:`Gauges` on a fresh registry.
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Gauge, Histogram

__all__ = ["Gauges", "gauges"]


class Gauges:
    """The product's operational gauges on one Prometheus registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.projection_lag = Gauge(
            "prm_projection_lag_events",
            "Event-store positions recorded but not yet applied by the projection.",
            ["projection"],
            registry=self.registry,
        )
        self.projection_position = Gauge(
            "prm_projection_position",
            "Event-store position up to which the projection has applied every event.",
            ["projection"],
            registry=self.registry,
        )
        self.store_position = Gauge(
            "prm_event_store_position", "Highest position recorded in the event store.", registry=self.registry
        )
        # Known only where a relay or an ingest consumer runs: exposed once set, never a made-up 0.
        self._relay_lag: Gauge | None = None
        self._deadletters: Gauge | None = None
        self._request_latency: Histogram | None = None
        self._lock = threading.Lock()

    def request_latency(self) -> Histogram:
        """``prm_http_request_duration_seconds{method, route, status}`` (created on first use)."""
        with self._lock:
            if self._request_latency is None:
                self._request_latency = Histogram(
                    "prm_http_request_duration_seconds",
                    "HTTP request latency by method, route template and status.",
                    ["method", "route", "status"],
                    registry=self.registry,
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
                )
            return self._request_latency

    def set_projection(self, projection: str, *, position: int, head: int) -> None:
        self.projection_position.labels(projection=projection).set(position)
        self.projection_lag.labels(projection=projection).set(max(0, head - position))

    def set_store_position(self, position: int) -> None:
        self.store_position.set(position)

    def set_relay_lag(self, lag: int) -> None:
        with self._lock:
            if self._relay_lag is None:
                self._relay_lag = Gauge(
                    "prm_relay_lag_events",
                    "Event-store positions recorded but not yet published to Kafka.",
                    registry=self.registry,
                )
        self._relay_lag.set(max(0, lag))

    def set_deadletters(self, count: int) -> None:
        with self._lock:
            if self._deadletters is None:
                self._deadletters = Gauge(
                    "prm_deadletter_messages",
                    "Inbound messages sent to the dead-letter topic so far.",
                    registry=self.registry,
                )
        self._deadletters.set(count)


_default: Gauges | None = None
_lock = threading.Lock()


def gauges() -> Gauges:
    """The process-wide gauges (created on first use)."""
    global _default
    with _lock:
        if _default is None:
            _default = Gauges()
        return _default
