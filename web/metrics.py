"""Prometheus metrics (``GET /metrics``): tasks, queue, runners, SSE relay, request latency, and
the deployments (``rfuav_serving_*``).

Task, queue and runner figures are the supervisor's (``health``), read at scrape time. Web's own
figures (SSE, read view, request latency, serving answers) are those of every worker of the
service added up (``web.figures``). Each app has its own ``CollectorRegistry`` so several apps
(tests) never clash.
Request latency is labelled by endpoint name, never by raw path, so ids cannot explode the
label set.

Serving: the answers and their latency as web gave them (``web.replicas.Replicas``: every
prediction request of a known deployment, end to end), and the supervisor's view of each
deployment (``deployments``, read at scrape time: replicas up, batches, cache hits, queue,
restarts; the batch-size and queue-wait histograms when the view carries them). Labels are
deployment names (and HTTP statuses, deployment statuses), nothing a request can make up.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from protocol import serving as sv
from web.figures import HTTP_BUCKETS, Figures

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class _ServiceCollector(Collector):
    """Figures from the last ``health`` snapshot and web's own (every worker's)."""

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
            yield _one(GaugeMetricFamily, "rfuav_supervisor_writes_waiting",
                       "the supervisor's own writes (events, task records) the disk refused, kept until stored",
                       snap.get("writes_waiting", 0))  # fmt: skip
            stored = CounterMetricFamily("rfuav_events_stored", "events stored by the supervisor")
            stored.add_metric([], float(snap.get("events_stored", 0)))
            yield stored
            yield from _executor_families(snap.get("executor") or {})
        totals = self.metrics.totals
        yield _one(GaugeMetricFamily, "rfuav_web_workers", "web worker processes whose figures these are",
                   totals.get("workers", 1))  # fmt: skip
        if "streams" in totals:
            for kind, name, doc, key in _WEB_FAMILIES:
                yield _one(kind, name, doc, totals[key])
        view = totals.get("view")
        if view is not None:
            reads = CounterMetricFamily(
                "rfuav_view_reads", "task reads by where they were answered", labels=["answered"]
            )
            reads.add_metric(["view"], float(view["hits"]))
            reads.add_metric(["supervisor"], float(view["misses"]))
            yield reads
            for kind, name, doc, key in _VIEW_FAMILIES:
                yield _one(kind, name, doc, view[key])
        latency = HistogramMetricFamily(
            "rfuav_http_request_duration_seconds",
            "HTTP request latency (to the end of the response; SSE streams excluded)",
            labels=["method", "endpoint", "status"],
        )
        for (method, endpoint, status), row in sorted(totals.get("http", {}).items()):
            counts = [int(n) for n in row[:-1]]
            latency.add_metric([method, endpoint, str(status)], _cumulative(HTTP_BUCKETS, counts), row[-1])
        yield latency


#: Web's own single-value series: (family, name, help, key in ``web.figures`` totals).
_WEB_FAMILIES: tuple[tuple[Any, str, str, str], ...] = (
    (CounterMetricFamily, "rfuav_events_relayed", "event deliveries to SSE clients", "relayed"),
    (GaugeMetricFamily, "rfuav_sse_clients", "open SSE streams", "streams"),
    (CounterMetricFamily, "rfuav_sse_events_sent", "events written to SSE clients (replay and live)", "sent"),
    (CounterMetricFamily, "rfuav_sse_dropped", "SSE clients dropped for falling behind", "dropped"),
)
_VIEW_FAMILIES: tuple[tuple[Any, str, str, str], ...] = (
    (GaugeMetricFamily, "rfuav_view_tasks", "task records held in the read views", "held"),
    (GaugeMetricFamily, "rfuav_view_live", "workers whose reads are answered from their read view", "live"),
    (CounterMetricFamily, "rfuav_view_snapshots", "read view snapshots taken (start, reconnect, gap)", "resyncs"),
)


def _one(kind: Any, name: str, doc: str, value: Any) -> Any:
    """A family of one unlabelled sample."""
    family = kind(name, doc)
    family.add_metric([], float(value))
    return family


def _cumulative(bounds: tuple[float, ...], counts: list[int], divisor: float = 1.0) -> list[tuple[str, float]]:
    """Prometheus buckets (cumulative, ``+Inf`` last) of per-bucket ``counts`` over ``bounds``
    (plus one overflow count), each bound divided by ``divisor`` (1000: milliseconds to seconds)."""
    out: list[tuple[str, float]] = []
    seen = 0
    for bound, n in zip(bounds, counts):
        seen += n
        out.append((repr(float(bound / divisor)), float(seen)))
    out.append(("+Inf", float(sum(counts))))
    return out


def _histogram(raw: Any, bounds: tuple[float, ...]) -> list[int] | None:
    """A view's per-bucket counts, when they are there and fit ``bounds``."""
    if isinstance(raw, list) and len(raw) == len(bounds) + 1 and all(isinstance(n, int) for n in raw):
        return raw
    return None


class _ServingCollector(Collector):
    """The deployments: web's answers (``Replicas``) and the supervisor's views."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        yield from self._answers()
        if self.metrics.deployments is not None:
            yield from self._views(self.metrics.deployments)

    def _answers(self) -> Iterator[Any]:
        totals = self.metrics.totals
        requests = CounterMetricFamily(
            "rfuav_serving_requests", "prediction requests answered by web, by deployment and HTTP status",
            labels=["deployment", "status"],
        )  # fmt: skip
        seconds = HistogramMetricFamily(
            "rfuav_serving_request_seconds", "prediction latency in web (end to end), by deployment",
            labels=["deployment"],
        )  # fmt: skip
        for (name, status), n in sorted(totals.get("answers", {}).items()):
            requests.add_metric([name, str(status)], float(n))
        for name, (counts, total) in sorted(totals.get("serving_latency", {}).items()):
            seconds.add_metric([name], _cumulative(sv.LATENCY_BUCKETS_MS, counts, 1000), total)
        yield requests
        yield seconds

    def _views(self, views: list[dict[str, Any]]) -> Iterator[Any]:
        def family(kind: type[Any], name: str, doc: str, *labels: str) -> Any:
            return kind(name, doc, labels=["deployment", *labels])

        G, C, H = GaugeMetricFamily, CounterMetricFamily, HistogramMetricFamily
        status = family(
            G, "rfuav_serving_deployment_status", "1 for the deployment's status, 0 for the others", "status"
        )
        version = family(G, "rfuav_serving_version", "the version served (reloads + 1)")
        up = family(G, "rfuav_serving_replicas_up", "replicas ready to answer")
        wanted = family(G, "rfuav_serving_replicas", "replicas the deployment runs (its setting)")
        restarts = family(C, "rfuav_serving_restarts", "replica restarts of the current version")
        batches = family(C, "rfuav_serving_batches", "forward passes")
        mean = family(G, "rfuav_serving_mean_batch_size", "inputs per forward pass, on average")
        hits = family(C, "rfuav_serving_cache_hits", "answers from the replicas' caches")
        queued = family(G, "rfuav_serving_queued", "requests waiting in the replicas now")
        sizes = family(H, "rfuav_serving_batch_size", "forward passes by batch size")
        waits = family(
            H, "rfuav_serving_queue_wait_seconds", "from a request's arrival in a replica to its forward pass"
        )
        for view in sorted(views, key=lambda v: str(v.get("name"))):
            name = str(view.get("name"))
            stats = view.get("stats") or {}
            for s in sv.DEPLOYMENT_STATUSES:
                status.add_metric([name, s], 1.0 if view.get("status") == s else 0.0)
            version.add_metric([name], float(view.get("version") or 0))
            replicas = view.get("replicas") or []
            up.add_metric([name], float(sum(1 for r in replicas if r.get("status") == sv.READY)))
            wanted.add_metric([name], float((view.get("settings") or {}).get("replicas") or len(replicas)))
            restarts.add_metric([name], float(view.get("restarts") or 0))
            batches.add_metric([name], float(stats.get("batches") or 0))
            mean.add_metric([name], float(stats.get("mean_batch_size") or 0.0))
            hits.add_metric([name], float(stats.get("cache_hits") or 0))
            queued.add_metric([name], float(stats.get("queued") or 0))
            raw = view.get("histograms") or {}
            counts = _histogram(raw.get("batch_size"), sv.BATCH_BUCKETS)
            if counts is not None:
                sizes.add_metric([name], _cumulative(sv.BATCH_BUCKETS, counts), float(raw.get("batched_items") or 0))
            counts = _histogram(raw.get("queue_wait_ms"), sv.LATENCY_BUCKETS_MS)
            if counts is not None:
                total = float(raw.get("queue_wait_sum_ms") or 0.0) / 1000
                waits.add_metric([name], _cumulative(sv.LATENCY_BUCKETS_MS, counts, 1000), total)
        yield from (status, version, up, wanted, restarts, batches, mean, hits, queued, sizes, waits)


def _executor_families(executor: dict[str, Any]) -> Iterator[Any]:
    """What runs the jobs (``rfuav_executor_info``) and, on Ray, the cluster's resources."""
    info = GaugeMetricFamily("rfuav_executor_info", "1 for the executor that runs jobs", labels=["executor"])
    info.add_metric([str(executor.get("executor", "local"))], 1.0)
    yield info
    cluster = executor.get("cluster") or {}
    if cluster:
        resources = GaugeMetricFamily(
            "rfuav_cluster_resources", "the Ray cluster's resources (memory in bytes)", labels=["resource", "state"]
        )
        for state in ("total", "available"):
            for name, value in sorted((cluster.get(state) or {}).items()):
                resources.add_metric([name, state], float(value))
        yield resources
        nodes = GaugeMetricFamily("rfuav_cluster_nodes", "live nodes of the Ray cluster")
        nodes.add_metric([], float(cluster.get("nodes", 0)))
        yield nodes


class Metrics:
    """One app's registry; ``render(snapshot, deployments)`` is the exposition text."""

    def __init__(self, figures: Figures | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        #: Web's own figures (this worker's, and with several workers everyone's).
        self.figures = figures or Figures()
        self.snapshot: dict[str, Any] | None = None
        #: The supervisor's deployment views at the last scrape (None: it did not answer).
        self.deployments: list[dict[str, Any]] | None = None
        #: ``figures.total()`` at the last scrape.
        self.totals: dict[str, Any] = {}
        self.registry.register(_ServiceCollector(self))
        self.registry.register(_ServingCollector(self))

    def render(self, snapshot: dict[str, Any] | None, deployments: list[dict[str, Any]] | None = None) -> bytes:
        self.snapshot = snapshot
        self.deployments = deployments
        self.totals = self.figures.total()
        return generate_latest(self.registry)


class LatencyMiddleware:
    """Observes every HTTP request's latency, by endpoint name and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.latency = metrics.figures.latency

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
                self.latency.observe(
                    (method, getattr(endpoint, "__name__", "unmatched"), status), time.perf_counter() - start
                )
