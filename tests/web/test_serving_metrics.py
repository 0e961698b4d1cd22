"""The ``rfuav_serving_*`` series of ``/metrics`` (``web.metrics``), from web's answers and the
supervisor's deployment views, rendered without a service: every series, its labels, the
histograms' buckets (milliseconds turned into seconds, cumulative, ``+Inf`` the total)."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from protocol import serving as sv
from web.metrics import Metrics
from web.replicas import Replicas


def _samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def _view(name: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name, "status": "ready", "version": 3, "device": "cpu",
        "settings": {"replicas": 2},
        "replicas": [{"pid": 1, "status": "ready"}, {"pid": 2, "status": "loading"}],
        "stats": {"requests": 9, "batches": 4, "mean_batch_size": 2.25, "cache_hits": 5, "queued": 1},
        "restarts": 2, **extra,
    }  # fmt: skip


@pytest.fixture()
def metrics() -> Metrics:
    m = Metrics()
    m.figures.replicas = Replicas(timeout=1.0)
    return m


def test_answers_and_latency_as_web_gave_them(metrics: Metrics) -> None:
    assert metrics.figures.replicas is not None
    metrics.figures.replicas.answers[("uav", 200)] += 3
    metrics.figures.replicas.answers[("uav", 503)] += 1
    for seconds in (0.0005, 0.004, 0.004, 30.0):  # buckets 1 ms, 5 ms, 5 ms, overflow
        metrics.figures.replicas.observe("uav", seconds)
    got = _samples(metrics.render(None, None))
    assert got[("rfuav_serving_requests_total", (("deployment", "uav"), ("status", "200")))] == 3
    assert got[("rfuav_serving_requests_total", (("deployment", "uav"), ("status", "503")))] == 1
    bucket = "rfuav_serving_request_seconds_bucket"
    assert got[(bucket, (("deployment", "uav"), ("le", "0.001")))] == 1
    assert got[(bucket, (("deployment", "uav"), ("le", "0.002")))] == 1
    assert got[(bucket, (("deployment", "uav"), ("le", "0.005")))] == 3
    assert got[(bucket, (("deployment", "uav"), ("le", "10.0")))] == 3
    assert got[(bucket, (("deployment", "uav"), ("le", "+Inf")))] == 4
    assert got[("rfuav_serving_request_seconds_count", (("deployment", "uav"),))] == 4
    assert got[("rfuav_serving_request_seconds_sum", (("deployment", "uav"),))] == pytest.approx(30.0085)
    # Without the supervisor's views: no per-deployment figures of its own, no error.
    assert not any(name.startswith("rfuav_serving_replicas") for name, _ in got)


def test_the_supervisors_figures_per_deployment(metrics: Metrics) -> None:
    batch = [0] * (len(sv.BATCH_BUCKETS) + 1)
    batch[0], batch[2] = 2, 2  # two passes of 1, two of 3-4
    wait = [0] * (len(sv.LATENCY_BUCKETS_MS) + 1)
    wait[3] = 4  # four waits of 5-10 ms
    views = [
        _view(
            "uav",
            histograms={"batch_size": batch, "batched_items": 9, "queue_wait_ms": wait, "queue_wait_sum_ms": 30.0},
        ),  # fmt: skip
        _view("other", status="loading", replicas=[]),
    ]
    got = _samples(metrics.render({"tasks": {}}, views))
    uav = (("deployment", "uav"),)
    assert got[("rfuav_serving_replicas_up", uav)] == 1
    assert got[("rfuav_serving_replicas", uav)] == 2
    assert got[("rfuav_serving_replicas_up", (("deployment", "other"),))] == 0
    assert got[("rfuav_serving_version", uav)] == 3
    assert got[("rfuav_serving_restarts_total", uav)] == 2
    assert got[("rfuav_serving_batches_total", uav)] == 4
    assert got[("rfuav_serving_mean_batch_size", uav)] == 2.25
    assert got[("rfuav_serving_cache_hits_total", uav)] == 5
    assert got[("rfuav_serving_queued", uav)] == 1
    status = "rfuav_serving_deployment_status"
    assert got[(status, (("deployment", "uav"), ("status", "ready")))] == 1
    assert got[(status, (("deployment", "uav"), ("status", "loading")))] == 0
    assert got[(status, (("deployment", "other"), ("status", "loading")))] == 1
    bucket = "rfuav_serving_batch_size_bucket"
    assert got[(bucket, (("deployment", "uav"), ("le", "1.0")))] == 2
    assert got[(bucket, (("deployment", "uav"), ("le", "2.0")))] == 2
    assert got[(bucket, (("deployment", "uav"), ("le", "4.0")))] == 4
    assert got[(bucket, (("deployment", "uav"), ("le", "+Inf")))] == 4
    assert got[("rfuav_serving_batch_size_sum", uav)] == 9
    assert got[("rfuav_serving_queue_wait_seconds_bucket", (("deployment", "uav"), ("le", "0.005")))] == 0
    assert got[("rfuav_serving_queue_wait_seconds_bucket", (("deployment", "uav"), ("le", "0.01")))] == 4
    assert got[("rfuav_serving_queue_wait_seconds_sum", uav)] == pytest.approx(0.03)
    # A view without histograms (or with malformed ones) has none, and breaks nothing.
    assert ("rfuav_serving_batch_size_count", (("deployment", "other"),)) not in got
    bad = metrics.render(None, [_view("x", histograms={"batch_size": [1, 2], "queue_wait_ms": "no"})])
    assert ("rfuav_serving_batch_size_count", (("deployment", "x"),)) not in _samples(bad)
