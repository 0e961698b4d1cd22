"""Reads at the edge (``web.view``): status reads and task lists answered by web from the task
records the supervisor publishes, with the supervisor's own bodies, a write visible in the next
read, a bounded view that asks on a miss, and a fresh snapshot after a lost change or a restart.

Which side answered is read from web's own counters (``rfuav_view_reads_total``), so these
services run one web worker whatever ``TEST_WEB_WORKERS`` says.
"""

from __future__ import annotations

import asyncio
import re
import signal
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest

from protocol import commands as cmd
from protocol.records import RECORDS_TOPIC
from tests.support.service import Service
from tests.web.test_sse import wait_until
from web.control import ControlClient
from web.hub import Hub
from web.view import View

ONE_WORKER = {"RFUAV_WEB_WORKERS": "1", "RFUAV_LIMIT_CPU_DIAGNOSTIC": "0"}


def ok(response: httpx.Response) -> Any:
    body = response.json()
    assert response.status_code == 200, body
    return body["data"]


def reads(http: httpx.Client) -> dict[str, float]:
    """Web's ``rfuav_view_reads_total`` by where the read was answered."""
    text = http.get("/metrics").text
    return {
        m.group(1): float(m.group(2))
        for m in re.finditer(r'^rfuav_view_reads_total\{answered="(\w+)"\} (\S+)$', text, re.M)
    }


def supervisor_list(svc: Service, **query: Any) -> dict[str, Any]:
    """``GET /api/v2/tasks`` as web builds it from the supervisor's own ``list`` answer."""
    data = svc.supervisor.call("list", **query)
    out: dict[str, Any] = {}
    groups: dict[str, list[dict[str, Any]]] = {t: [] for t in data["totals"]}
    for task in data["tasks"]:
        groups[task["task_type"]].append(task)
    for kind, tasks in groups.items():
        out[f"{kind}_tasks"] = tasks
        out[f"total_{kind}"] = data["totals"][kind]
    out["next_cursor"] = None if data["next_cursor"] is None else str(data["next_cursor"])
    out["limit"] = query.get("limit", 100)
    return out


def settle(svc: Service, http: httpx.Client) -> None:
    """Wait until web's view has every change the supervisor made so far (a no-op write: its
    reply's position is awaited before web answers)."""
    ok(http.get("/api/v2/resources"))


@pytest.mark.timeout(180)
def test_reads_are_answered_in_web_with_the_supervisors_bodies(make_service: Any) -> None:
    svc = make_service(**ONE_WORKER)
    with httpx.Client(base_url=svc.base_url, timeout=30) as http:
        done = ok(http.post("/api/v2/diagnostic/start", json={"events": 2}))["task_id"]
        svc.client.set_limits({"cpu": {"diagnostic": 1}})
        svc.supervisor.wait_final(done)
        svc.client.set_limits({"cpu": {"diagnostic": 0}})
        pending = [ok(http.post("/api/v2/diagnostic/start", json={"events": 2}))["task_id"] for _ in range(2)]
        cancelled = ok(http.post("/api/v2/diagnostic/start", json={}))["task_id"]
        ok(http.post(f"/api/v2/tasks/{cancelled}/cancel"))
        settle(svc, http)
        before = reads(http)
        for tid in [done, cancelled, *pending]:
            body = ok(http.get(f"/api/v2/tasks/{tid}"))
            theirs = svc.supervisor.get(tid)
            if body["status"] == "pending":  # the only field that moves by itself: 0 until it starts
                assert body["duration"] == theirs["duration"] == 0
            assert body == theirs
        typed = http.get(f"/api/v2/training/{done}")  # a diagnostic task is not a training task
        assert typed.status_code == 404 and done in typed.json()["msg"]
        for query in ({}, {"task_type": "diagnostic"}, {"status": "pending"}, {"limit": 2}, {"limit": 1, "cursor": 3}):
            params = {k: str(v) for k, v in query.items()}
            assert ok(http.get("/api/v2/tasks", params=params)) == supervisor_list(svc, **query), query
        page = ok(http.get("/api/v2/tasks", params={"limit": "2"}))
        assert page["next_cursor"] is not None
        rest = ok(http.get("/api/v2/tasks", params={"limit": "10", "cursor": page["next_cursor"]}))
        assert rest == supervisor_list(svc, limit=10, cursor=int(page["next_cursor"]))
        after = reads(http)
        assert after["view"] - before.get("view", 0) == 4 + 1 + 5 + 2  # every read above
        assert after["supervisor"] == before.get("supervisor", 0)  # not one read crossed


@pytest.mark.timeout(180)
def test_a_write_is_in_the_next_read(make_service: Any) -> None:
    """Submit, cancel and delete, each followed at once by a read on the same connection."""
    svc = make_service(**ONE_WORKER)
    with httpx.Client(base_url=svc.base_url, timeout=30) as http:
        for _ in range(20):
            tid = ok(http.post("/api/v2/diagnostic/start", json={}))["task_id"]
            assert ok(http.get(f"/api/v2/tasks/{tid}"))["status"] == "pending"
            listed = ok(http.get("/api/v2/tasks", params={"status": "pending"}))
            assert tid in [t["task_id"] for t in listed["diagnostic_tasks"]]
            ok(http.post(f"/api/v2/tasks/{tid}/cancel"))
            assert ok(http.get(f"/api/v2/tasks/{tid}"))["status"] == "cancelled"
            assert ok(http.get("/api/v2/tasks", params={"status": "pending"}))["total_diagnostic"] == 0
            ok(http.delete(f"/api/v2/tasks/{tid}"))
            assert http.get(f"/api/v2/tasks/{tid}").status_code == 404
        assert reads(http).get("view", 0) >= 60


@pytest.mark.timeout(180)
def test_a_bounded_view_asks_on_a_miss_and_remembers(make_service: Any) -> None:
    svc = make_service(RFUAV_WEB_VIEW_TASKS="3", **ONE_WORKER)
    with httpx.Client(base_url=svc.base_url, timeout=30) as http:
        ids = [ok(http.post("/api/v2/diagnostic/start", json={}))["task_id"] for _ in range(8)]
        for tid in ids:
            ok(http.post(f"/api/v2/tasks/{tid}/cancel"))
        settle(svc, http)
        r0 = reads(http)
        assert ok(http.get("/api/v2/tasks", params={"limit": "2"})) == supervisor_list(svc, limit=2)
        r1 = reads(http)
        assert r1["view"] == r0.get("view", 0) + 1  # the newest two: inside the window
        assert ok(http.get("/api/v2/tasks", params={"limit": "6"})) == supervisor_list(svc, limit=6)
        r2 = reads(http)
        assert r2["supervisor"] == r1.get("supervisor", 0) + 1  # reaches below the window
        oldest = ids[0]
        assert ok(http.get(f"/api/v2/tasks/{oldest}")) == svc.supervisor.get(oldest)
        r3 = reads(http)
        assert r3["supervisor"] == r2["supervisor"] + 1
        assert ok(http.get(f"/api/v2/tasks/{oldest}")) == svc.supervisor.get(oldest)
        assert reads(http)["view"] == r3["view"] + 1  # remembered
        ok(http.delete(f"/api/v2/tasks/{oldest}"))
        assert http.get(f"/api/v2/tasks/{oldest}").status_code == 404


@pytest.mark.timeout(180)
def test_the_view_comes_back_after_a_supervisor_restart(make_service: Any) -> None:
    svc = make_service(**ONE_WORKER)
    with httpx.Client(base_url=svc.base_url, timeout=30) as http:
        tid = ok(http.post("/api/v2/diagnostic/start", json={}))["task_id"]
        svc.stop_supervisor(signal.SIGKILL)
        assert http.get(f"/api/v2/tasks/{tid}").status_code == 503  # not a stale answer
        svc.start_supervisor()
        wait_until(svc, lambda: http.get("/api/v1/health").status_code == 200, 30, "web reconnected")
        # A change made by the new supervisor without web: the view must hold it once it is back.
        svc.supervisor.call("cancel", task_id=tid)
        wait_until(svc, lambda: "rfuav_view_live 1.0" in http.get("/metrics").text, 30, "the view is live again")
        before = reads(http)
        settle(svc, http)
        assert ok(http.get(f"/api/v2/tasks/{tid}")) == svc.supervisor.get(tid)
        assert ok(http.get(f"/api/v2/tasks/{tid}"))["status"] == "cancelled"
        assert reads(http)["view"] == before.get("view", 0) + 2


@pytest.mark.timeout(120)
def test_a_lost_change_or_a_new_epoch_takes_a_snapshot_again(make_service: Any) -> None:
    """A ``View`` of this test's own, wired to the service's sockets as web wires it: fed a message
    that skips a change (or comes from another epoch), it stops answering, takes a snapshot again
    and is current."""
    svc = make_service(**ONE_WORKER)
    tid = svc.supervisor.submit()

    async def scenario() -> None:
        control = ControlClient(svc.settings.addresses.control)
        hub = Hub(svc.settings.addresses.events_out)
        view = View(control, 100, feed=hub)
        hub.topics[RECORDS_TOPIC] = view.on_message
        hub.on_disconnect.append(view.invalidate)
        control.on_position = view.caught_up
        await control.start()
        await hub.start()
        try:
            view.start()
            await _until(lambda: view.ready)
            assert view.get(tid, None) is not None and view.resyncs == 1
            for forged in (
                {"epoch": view.epoch, "rev": view.rev + 5, "records": [], "counts": {}},
                {"epoch": "another", "rev": 1, "records": [], "counts": {}},
            ):
                view.on_message(orjson.dumps(forged))
                assert not view.live and view.get(tid, None) is None  # a miss: the supervisor answers
                await _until(lambda: view.ready)
            assert view.resyncs == 3
            view.on_message(b"not json")  # dropped, nothing else happens
            assert view.ready
            # A cancel through this view's own control client is in its next read.
            await control.call(cmd.Cancel(task_id=tid))
            body = view.get(tid, None)
            assert body is not None and body["status"] == "cancelled"
            assert body == svc.supervisor.get(tid)
        finally:
            view.stop()
            await hub.stop()
            await control.stop()

    asyncio.run(scenario())


async def _until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    """Look again each loop turn (the view changes only in this loop) until ``predicate``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            pytest.fail(f"not within {timeout} s")
        await asyncio.sleep(0.01)
