"""Hardening over HTTP: anchored ids, the diagnostic job's switch and bounds, the paged task
list, and the control plane's loop-lag gauge."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.support.service import Service


@pytest.fixture(scope="module")
def http(api: Service) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        yield client


def _error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["code"] == status
    return body


@pytest.mark.parametrize("task_id", ["abc\n", "abc\r\n", "\nabc", "a\tb"])
def test_task_id_with_line_breaks_is_a_400(http: httpx.Client, task_id: str) -> None:
    before = http.get("/api/v2/tasks").json()["data"]["total_diagnostic"]
    body = _error(http.post("/api/v2/diagnostic/start", json={"task_id": task_id}), 400)
    assert "task_id" in body["msg"]
    assert http.get("/api/v2/tasks").json()["data"]["total_diagnostic"] == before


def test_diagnostic_bounds_are_400s_naming_the_field(http: httpx.Client) -> None:
    for field, value in (("events", 1_000_001), ("size", 65_537), ("sleep", 3_601), ("memory_mb", 10**6)):
        body = _error(http.post("/api/v2/diagnostic/start", json={field: value}), 400)
        assert field in body["msg"], body


def test_diagnostic_job_is_404_unless_enabled(make_service: Callable[..., Service]) -> None:
    svc = make_service(RFUAV_DIAGNOSTIC="0")
    body = _error(httpx.post(svc.base_url + "/api/v2/diagnostic/start", json={}), 404)
    assert "RFUAV_DIAGNOSTIC=1" in body["msg"]
    assert httpx.get(svc.base_url + "/api/v2/tasks").json()["data"]["total_diagnostic"] == 0


def test_task_list_is_paged_with_totals_of_every_match(api: Service, http: httpx.Client) -> None:
    mine = [api.client.start_diagnostic()["task_id"] for _ in range(7)]
    for task_id in mine:
        api.client.wait_for(task_id, timeout=60)
    total = http.get("/api/v2/tasks", params={"task_type": "diagnostic"}).json()["data"]["total_diagnostic"]
    assert total >= 7
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"task_type": "diagnostic", "limit": 3}
        if cursor is not None:
            params["cursor"] = cursor
        page = http.get("/api/v2/tasks", params=params).json()["data"]
        assert page["total_diagnostic"] == total and page["limit"] == 3 and len(page["diagnostic_tasks"]) <= 3
        seen += [t["task_id"] for t in page["diagnostic_tasks"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == total
    assert seen[:7] == list(reversed(mine))  # newest first
    assert [t["task_id"] for t in api.client.iter_tasks(task_type="diagnostic", limit=2)] == seen
    for params in (
        {"limit": "0"},
        {"limit": "1001"},
        {"limit": "²"},
        {"limit": "1e3"},
        {"cursor": "abc"},
        {"cursor": "-1"},
    ):
        body = _error(http.get("/api/v2/tasks", params=params), 400)
        assert next(iter(params)) in body["msg"], body


def test_metrics_export_the_supervisor_loop_lag(http: httpx.Client) -> None:
    text = http.get("/metrics").text
    line = next(li for li in text.splitlines() if li.startswith("rfuav_supervisor_loop_lag_seconds "))
    assert float(line.split()[1]) >= 0
