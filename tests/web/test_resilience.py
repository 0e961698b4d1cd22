"""The supervisor killed and restarted while web stays up: 503 with a clear message meanwhile,
then full service again without restarting web."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.service import Service
from tests.support.small_disk import SmallDisk
from tests.web.test_sse import wait_until


@pytest.mark.timeout(180)
def test_supervisor_down_then_back(make_service: Any) -> None:
    # Heartbeats (and the store re-reads they trigger) are off the table: after the restart the
    # stream below can only finish if web's event socket reconnected by itself.
    svc = make_service(RFUAV_SSE_HEARTBEAT="3600")
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
        bad_resume = http.get(f"/api/v2/tasks/{before['task_id']}/events", headers={"Last-Event-ID": "²".encode()})
        assert bad_resume.status_code == 400 and "Last-Event-ID" in bad_resume.json()["msg"]
        assert http.get(f"/api/v2/tasks/{before['task_id']}/logs", params={"after": str(2**64)}).status_code == 400

        svc.start_supervisor()
        wait_until(svc, lambda: http.get("/api/v1/health").status_code == 200, 30, "web reconnected")
        assert svc.web.poll() is None and svc.web_pid == web_pid  # the same web process throughout
        assert http.get(f"/api/v2/tasks/{before['task_id']}").json()["data"]["status"] == "completed"
        svc.client.set_limits({"cpu": {"diagnostic": 0}})  # held until the stream is open
        after = svc.client.start_diagnostic(events=5)
        with (
            httpx.Client(base_url=svc.base_url, timeout=60) as sse_http,
            sse_http.stream("GET", f"/api/v2/tasks/{after['task_id']}/events") as stream,
        ):
            wait_until(
                svc, lambda: http.get("/api/v1/health").json()["data"]["active_log_streams"] == 1, 30, "stream open"
            )
            svc.client.set_limits({"cpu": {"diagnostic": 8}})
            seqs = [int(line[4:]) for line in stream.iter_lines() if line.startswith("id: ")]
        assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) >= 8
        assert svc.client.wait_for(after["task_id"], timeout=30)["status"] == "completed"


@pytest.mark.timeout(120)
def test_web_shutdown_with_open_streams(make_service: Any) -> None:
    """SIGTERM to web with an SSE stream open: web exits cleanly within its graceful-shutdown
    window (streams included), the client sees the stream end, and resumes on a new web."""
    svc = make_service()
    task = svc.client.start_diagnostic(events=3, sleep=60)
    path = f"/api/v2/tasks/{task['task_id']}/events"
    seen: list[int] = []
    with httpx.Client(base_url=svc.base_url, timeout=30) as http, http.stream("GET", path) as r:
        lines = r.iter_lines()
        for line in lines:
            if line.startswith("id: "):
                seen.append(int(line[4:]))
            if len(seen) >= 3:
                break
        # uvicorn waits up to its graceful-shutdown window, cuts the stream, and re-raises the
        # SIGTERM it caught once it is done (exit status -15): a clean, bounded stop.
        assert svc.stop_web(timeout=30) in (0, -15)
        assert "Traceback" not in svc.web_log_text()
        with pytest.raises(httpx.HTTPError):
            for _line in lines:  # the rest of the stream is cut off
                pass
    svc.start_web()  # a new web process; the client resumes where it stopped
    svc.client.cancel_task(task["task_id"])
    rest = [e["seq"] for e in svc.client.stream_events(task["task_id"], last_event_id=seen[-1])]
    assert rest == list(range(seen[-1] + 1, rest[-1] + 1)) and len(rest) >= 1
    assert svc.client.wait_for(task["task_id"], timeout=30)["status"] == "cancelled"


@pytest.mark.timeout(180)
def test_a_full_disk_is_a_503_to_whoever_writes_and_health_says_so_until_there_is_room(tmp_path: Path) -> None:
    """The service's home on a small file system of its own, filled for real: a submit and a
    cancel are answered 503 naming the cause (nothing of them is stored; the cancel is carried
    out all the same), ``/api/v1/health`` is 503 ``unhealthy`` with what waits, ``/metrics``
    counts it. Once there is room the service is healthy again with nothing waiting, and the
    task's end is stored: cancelled."""
    with SmallDisk(tmp_path / "disk") as disk:
        svc = Service(home=disk.path, env={"RFUAV_GRACE_SECONDS": "2"}).start()
        try:
            with httpx.Client(base_url=svc.base_url, timeout=30) as http:
                task_id = http.post("/api/v2/diagnostic/start", json={"sleep": 120}).json()["data"]["task_id"]
                status = lambda: http.get(f"/api/v2/tasks/{task_id}").json()["data"]["status"]  # noqa: E731
                wait_until(svc, lambda: status() == "running", 30, "running")
                disk.fill()
                for path, body in (
                    ("/api/v2/diagnostic/start", {"events": 1}),
                    (f"/api/v2/tasks/{task_id}/cancel", None),
                ):
                    r = http.post(path, json=body)
                    assert r.status_code == 503 and "disk refuses writes" in r.json()["msg"], (path, r.text)
                health = wait_until(
                    svc, lambda: (h := http.get("/api/v1/health")).json()["data"]["running"] == 0 and h, 30, "job ended"
                )
                data = health.json()["data"]
                assert health.status_code == 503 and data["status"] == "unhealthy" and data["writes_waiting"] >= 2
                assert "disk refuses its writes" in data["supervisor"]
                assert "rfuav_supervisor_writes_waiting 0.0" not in http.get("/metrics").text
                disk.free()
                wait_until(svc, lambda: http.get("/api/v1/health").status_code == 200, 30, "healthy again")
                assert http.get("/api/v1/health").json()["data"]["writes_waiting"] == 0
                assert "rfuav_supervisor_writes_waiting 0.0" in http.get("/metrics").text
                assert status() == "cancelled"
        finally:
            svc.close()
