"""Several web workers (``RFUAV_WEB_WORKERS``): every worker serves, the service's figures are
every worker's added up, and a worker that dies is replaced while the others go on serving.

(The whole web suite also runs against two workers: ``TEST_WEB_WORKERS=2``, as ``make test``
does.)"""

from __future__ import annotations

import re
import signal
from typing import Any

import httpx
import psutil
import pytest

from tests.support.service import Service
from tests.web.test_sse import wait_until

TWO = {"RFUAV_WEB_WORKERS": "2", "RFUAV_LIMIT_CPU_DIAGNOSTIC": "0"}


def workers(svc: Service) -> list[int]:
    """The pids of web's uvicorn workers (spawned processes; not multiprocessing's resource tracker)."""
    out = []
    for child in psutil.Process(svc.web_pid).children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "spawn_main" in " ".join(child.cmdline()):
                out.append(child.pid)
        except psutil.NoSuchProcess:
            continue
    return sorted(out)


def metric(svc: Service, name: str) -> float | None:
    text = httpx.get(svc.url("/metrics"), timeout=10).text
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


def streams(svc: Service) -> int:
    return int(httpx.get(svc.url("/api/v1/health"), timeout=10).json()["data"]["active_log_streams"])


@pytest.mark.timeout(180)
def test_two_workers_serve_and_their_figures_add_up(make_service: Any) -> None:
    svc = make_service(**TWO)
    assert len(workers(svc)) == 2
    task = svc.client.start_diagnostic()  # pending: its stream stays open
    path = f"/api/v2/tasks/{task['task_id']}/events"
    # New connections spread over both workers; each answers from its own read view.
    for _ in range(40):
        with httpx.Client(base_url=svc.base_url, timeout=30) as http:
            assert http.get(f"/api/v2/tasks/{task['task_id']}").json()["data"]["status"] == "pending"
    wait_until(svc, lambda: metric(svc, "rfuav_web_workers") == 2.0, 30, "both workers' figures in /metrics")
    wait_until(svc, lambda: metric(svc, "rfuav_view_live") == 2.0, 30, "both workers' read views live")
    clients = [httpx.Client(base_url=svc.base_url, timeout=60) for _ in range(4)]
    opened = [c.stream("GET", path) for c in clients]
    try:
        for stream in opened:
            stream.__enter__()
        # Whichever worker answers, it counts the streams of both.
        wait_until(svc, lambda: all(streams(svc) == 4 for _ in range(6)), 30, "4 streams, counted by any worker")
    finally:
        for stream in opened:
            stream.__exit__(None, None, None)
        for c in clients:
            c.close()
    wait_until(svc, lambda: all(streams(svc) == 0 for _ in range(6)), 30, "streams released")


@pytest.mark.timeout(180)
def test_a_worker_that_dies_is_replaced(make_service: Any) -> None:
    svc = make_service(**TWO)
    first = workers(svc)
    psutil.Process(first[0]).send_signal(signal.SIGKILL)
    # The other worker goes on answering meanwhile (a new connection each time).
    for _ in range(10):
        assert httpx.get(svc.url("/api/v1/health"), timeout=30).status_code == 200
    wait_until(
        svc,
        lambda: len(now := workers(svc)) == 2 and first[0] not in now,
        60,
        "uvicorn started a new worker in place of the dead one",
    )
    assert first[1] in workers(svc)
    for _ in range(10):
        assert httpx.get(svc.url("/api/v2/tasks"), timeout=30).status_code == 200
