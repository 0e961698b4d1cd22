"""The supervisor killed and restarted while web stays up: 503 with a clear message meanwhile,
then full service again without restarting web."""

from __future__ import annotations

import signal
from typing import Any

import httpx
import pytest

from tests.web.test_sse import wait_until


@pytest.mark.timeout(180)
def test_supervisor_down_then_back(make_service: Any) -> None:
    svc = make_service()
    before = svc.client.start_diagnostic(events=3)
    svc.client.wait_for(before["task_id"], timeout=60)
    web_pid = svc.web_pid

    svc.stop_supervisor(signal.SIGKILL)
    with httpx.Client(base_url=svc.base_url, timeout=30) as http:
        for method, path, body in (("GET", "/api/v2/tasks", None), ("GET", f"/api/v2/tasks/{before['task_id']}", None),
                                   ("POST", "/api/v2/diagnostic/start", {"events": 1}),
                                   ("GET", f"/api/v2/tasks/{before['task_id']}/events", None),
                                   ("GET", "/api/v2/resources", None)):  # fmt: skip
            r = http.request(method, path, json=body)
            assert r.status_code == 503, (path, r.text)
            envelope = r.json()
            assert envelope["code"] == 503 and "supervisor" in envelope["msg"] and envelope["data"] == {}
        health = http.get("/api/v1/health")
        assert health.status_code == 503 and health.json()["data"]["status"] == "unhealthy"
        assert http.get("/api/v1/info").status_code == 200  # static facts still answer
        assert "rfuav_supervisor_up 0.0" in http.get("/metrics").text
        # Bad input is still judged by web alone.
        assert http.post("/api/v2/training/start", json={"model": "x"}).status_code == 400

        svc.start_supervisor()
        wait_until(lambda: http.get("/api/v1/health").status_code == 200, 30, "web reconnected")
        assert svc.web.poll() is None and svc.web_pid == web_pid  # the same web process throughout
        assert http.get(f"/api/v2/tasks/{before['task_id']}").json()["data"]["status"] == "completed"
        after = svc.client.start_diagnostic(events=5)
        events = list(svc.client.stream_events(after["task_id"]))
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        assert events[-1]["status"] == "completed"
