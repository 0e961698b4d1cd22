"""Prometheus metrics (``GET /metrics``): tasks, queue, runners, SSE relay, request latency.

Task, queue and runner figures are the supervisor's (``health``), read at scrape time; web keeps
no task state. Each app has its own ``CollectorRegistry`` so several apps (tests) never clash.
Request latency is labelled by endpoint name, never by raw path, so ids cannot explode the
label set.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from web.hub import Hub

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class _ServiceCollector(Collector):
    """Figures from the last ``health`` snapshot and the hub's counters."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        snap = self.metrics.snapshot
        up = GaugeMetricFamily("rfuav_supervisor_up", "1 when the supervisor answered the last scrape")
        up.add_metric([], 1.0 if snap else 0.0)
        yield up
        if snap:
            tasks = GaugeMetricFamily("rfuav_tasks", "tasks by type and status", labels=["type", "status"])
            for task_type, counts in sorted((snap.get("tasks") or {}).items()):
                for status, n in sorted(counts.items()):
                    tasks.add_metric([task_type, status], float(n))
            yield tasks
            queue = GaugeMetricFamily("rfuav_queue_length", "tasks waiting for a slot")
            queue.add_metric([], float(snap.get("queued", 0)))
            yield queue
            runners = GaugeMetricFamily("rfuav_runners", "live runner processes")
            runners.add_metric([], float(snap.get("running", 0)))
            yield runners
            lag = GaugeMetricFamily(
                "rfuav_supervisor_loop_lag_seconds",
                "the supervisor's event-loop lag: the worst delay of its 0.25 s timer over the last minute",
            )
            lag.add_metric([], float(snap.get("loop_lag_max_seconds", 0.0)))
            yield lag
            stored = CounterMetricFamily("rfuav_events_stored", "events stored by the supervisor")
            stored.add_metric([], float(snap.get("events_stored", 0)))
            yield stored
        hub = self.metrics.hub
        if hub is not None:
            relayed = CounterMetricFamily("rfuav_events_relayed", "event deliveries to SSE clients")
            relayed.add_metric([], float(hub.relayed))
            yield relayed
            clients = GaugeMetricFamily("rfuav_sse_clients", "open SSE streams")
            clients.add_metric([], float(hub.active))
            yield clients
            sent = CounterMetricFamily("rfuav_sse_events_sent", "events written to SSE clients (replay and live)")
            sent.add_metric([], float(hub.sent))
            yield sent
            dropped = CounterMetricFamily("rfuav_sse_dropped", "SSE clients dropped for falling behind")
            dropped.add_metric([], float(hub.dropped))
            yield dropped


class Metrics:
    """One app's registry; ``render(snapshot)`` is the exposition text."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.hub: Hub | None = None
        self.snapshot: dict[str, Any] | None = None
        self.latency = Histogram(
            "rfuav_http_request_duration_seconds",
            "HTTP request latency (to the end of the response; SSE streams excluded)",
            ["method", "endpoint", "status"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
        )
        self.registry.register(_ServiceCollector(self))

    def render(self, snapshot: dict[str, Any] | None) -> bytes:
        self.snapshot = snapshot
        return generate_latest(self.registry)


class LatencyMiddleware:
    """Observes every HTTP request's latency, by endpoint name and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        self._children: dict[tuple[str, str, int], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        streaming = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, streaming
            if message["type"] == "http.response.start":
                status = int(message["status"])
                for name, value in message.get("headers", ()):
                    if name == b"content-type" and value.startswith(b"text/event-stream"):
                        streaming = True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            if not streaming:
                endpoint = scope.get("endpoint")
                method = scope["method"] if scope["method"] in _METHODS else "OTHER"  # bounded labels
                key = (method, getattr(endpoint, "__name__", "unmatched"), status)
                child = self._children.get(key)
                if child is None:  # labels() is not free: keep one child per label set
                    child = self._children[key] = self.metrics.latency.labels(key[0], key[1], str(status))
                child.observe(time.perf_counter() - start)
