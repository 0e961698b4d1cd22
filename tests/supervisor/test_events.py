"""The event pipeline end to end: diagnostic runners → supervisor → a SUB on events-out."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from supervisor.gpu import Gpus
from tests.support.supervisor import SupervisorProcess


def _runner_logs(events: list[dict[str, Any]]) -> list[int]:
    """The diagnostic job's event counter ``i`` of each of its log events, in arrival order."""
    return [e["i"] for e in events if "i" in e]


@pytest.mark.timeout(240)
def test_100k_events_arrive_in_order_without_gap(supervisor: SupervisorProcess) -> None:
    n = 100_000
    sub = supervisor.subscribe()
    task_id = supervisor.submit(params={"events": n})
    events = sub.until_final(task_id, timeout=200)
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(1, len(events) + 1)), "seq must be gap-free from 1 on the live stream"
    assert _runner_logs(events) == list(range(1, n + 1))
    assert events[-1]["status"] == "completed"
    rseqs = [e["rseq"] for e in events if "rseq" in e]
    assert rseqs == list(range(1, len(rseqs) + 1))
    task = supervisor.wait_final(task_id)
    assert task["status"] == "completed" and task["progress"] == 100
    assert task["last_seq"] == len(events)
    health = supervisor.call("health")
    assert health["events_stored"] == len(events)
    assert health["events_dropped"] == 0


@pytest.mark.timeout(240)
def test_20_concurrent_runners_complete_with_all_events(supervisor: SupervisorProcess) -> None:
    supervisor.call("set_limits", limits={"cpu": {"diagnostic": 20}})
    n = 2_000
    sub = supervisor.subscribe()
    # 21 in one submit, stored and queued (the reply), then placed once committed, before the
    # reply is sent: 20 at once, the 21st waits for a free slot.
    spec = {"task_type": "diagnostic", "job": "diagnostic", "params": {"events": n, "size": 200}}
    placed = supervisor.call("submit", tasks=[spec] * 21)["tasks"]
    assert [t["status"] for t in placed] == ["pending"] * 21
    resources = supervisor.call("resources")
    assert (resources["running"], resources["queue_length"]) == (20, 1)
    ids = [t["task_id"] for t in placed]
    per_task: dict[str, list[dict[str, Any]]] = {t: [] for t in ids}
    done: set[str] = set()
    running: set[str] = set()
    max_running = 0
    while len(done) < len(ids):
        task_id, event = sub.recv(timeout=120)
        per_task[task_id].append(event)
        if event.get("source") == "supervisor" and event["message"].startswith("started on"):
            running.add(task_id)
            max_running = max(max_running, len(running))
        if event.get("kind") == "status" and event.get("status") in ("completed", "failed", "cancelled"):
            done.add(task_id)
            running.discard(task_id)
    for task_id, events in per_task.items():
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1)), task_id
        assert _runner_logs(events) == list(range(1, n + 1)), task_id
        assert events[-1]["status"] == "completed"
        assert [e["seq"] for e in supervisor.logs(task_id)] == [e["seq"] for e in events]
    # They really ran side by side (several overlap even on 2 cores), never more than 20.
    assert 2 <= max_running <= 20


def _watch_concurrency(
    sub: Any, ids: set[str], on_start: Callable[[str, set[str]], None] | None = None, timeout: float = 120
) -> tuple[int, list[str]]:
    """Follow events until every task in ``ids`` ended; return (max running, start order)."""
    running: set[str] = set()
    done: set[str] = set()
    order: list[str] = []
    peak = 0
    while done != ids:
        task_id, event = sub.recv(timeout=timeout)
        if task_id not in ids:
            continue
        if event.get("source") == "supervisor" and event["message"].startswith("started on"):
            if on_start:
                on_start(task_id, running)
            running.add(task_id)
            order.append(task_id)
            peak = max(peak, len(running))
        elif event.get("kind") == "status" and event.get("status") in ("completed", "failed", "cancelled"):
            running.discard(task_id)
            done.add(task_id)
    return peak, order


@pytest.mark.timeout(180)
def test_priority_order(supervisor: SupervisorProcess) -> None:
    supervisor.call("set_limits", limits={"cpu": {"diagnostic": 1}})
    sub = supervisor.subscribe()
    blocker = supervisor.submit(params={"sleep": 60})
    supervisor.wait_task(blocker, lambda t: t["status"] == "running")
    priorities = [1, 5, 9, 5, 10, 3]
    ids = [supervisor.submit(params={}, priority=p) for p in priorities]
    assert all(supervisor.get(t)["status"] == "pending" for t in ids)
    supervisor.call("cancel", task_id=blocker)
    _, order = _watch_concurrency(sub, set(ids))
    expected = [ids[4], ids[2], ids[1], ids[3], ids[5], ids[0]]  # 10, 9, 5 (first), 5, 3, 1
    assert order == expected


@pytest.mark.timeout(240)
def test_max_concurrency_respects_limits_also_after_change(supervisor: SupervisorProcess) -> None:
    sub = supervisor.subscribe()
    # Phase 1: limit 2.
    supervisor.call("set_limits", limits={"cpu": {"diagnostic": 2}})
    ids = {supervisor.submit(params={"sleep": 1.0}) for _ in range(5)}
    peak, _ = _watch_concurrency(sub, ids)
    assert peak == 2
    # Phase 2: raised to 3.
    data = supervisor.call("set_limits", limits={"cpu": {"diagnostic": 3}})
    assert data["limits"]["cpu"]["diagnostic"] == 3
    ids = {supervisor.submit(params={"sleep": 1.0}) for _ in range(6)}
    peak, _ = _watch_concurrency(sub, ids)
    assert peak == 3
    # Phase 3: three long tasks run, the limit drops to 1: nothing new starts until all
    # three are gone.
    long_ids = [supervisor.submit(params={"sleep": 60}) for _ in range(3)]
    for t in long_ids:
        supervisor.wait_task(t, lambda task: task["status"] == "running")
    supervisor.call("set_limits", limits={"cpu": {"diagnostic": 1}})
    late = {supervisor.submit(params={"sleep": 0.2}) for _ in range(2)}
    assert supervisor.call("resources")["queue_length"] == 2
    for t in long_ids:
        supervisor.call("cancel", task_id=t)

    def check(task_id: str, running: set[str]) -> None:
        if task_id in late:
            assert not running, f"{task_id} started while {running} still ran (limit 1)"

    peak, _ = _watch_concurrency(sub, late | set(long_ids), on_start=check)
    assert peak == 3  # the three long ones together, then each late one alone


def test_resources_and_limits_view(supervisor: SupervisorProcess) -> None:
    data = supervisor.call("resources")
    assert set(data) >= {"device_usage", "active_tasks", "limits", "gpu_info", "queue_length", "running"}
    assert data["limits"]["cpu"]["training"] == 2 and data["limits"]["cpu"]["inference"] == 4
    # The GPUs are NVML's, asked here too (none on a host without a driver).
    gpus = Gpus()
    try:
        assert data["gpu_info"]["available"] is gpus.available and data["gpu_info"]["count"] == gpus.count
        assert [d["device_name"] for d in data["gpu_info"]["devices"]] == [f"cuda:{i}" for i in range(gpus.count)]
        assert set(data["device_usage"]) == {"cpu", *(f"cuda:{i}" for i in range(gpus.count))}
    finally:
        gpus.close()


def test_malformed_runner_events_are_dropped_daemon_stays_up(supervisor: SupervisorProcess) -> None:
    import orjson
    import zmq

    task_id = supervisor.submit(params={"events": 50, "sleep": 1.0})
    supervisor.wait_task(task_id, lambda t: t["status"] == "running" and t["last_seq"] >= 3)
    ctx: zmq.Context[bytes] = zmq.Context()
    rogue = ctx.socket(zmq.XPUB)
    rogue.setsockopt(zmq.LINGER, 1000)
    rogue.connect(supervisor.settings.addresses.events_in)
    try:
        assert rogue.poll(10_000), "no subscription from the supervisor"
        rogue.recv()
        topic = task_id.encode()
        rogue.send_multipart([topic, b"{not json"])
        rogue.send_multipart([topic, orjson.dumps({"rseq": "x", "kind": "log"})])
        rogue.send_multipart([topic, orjson.dumps([1, 2])])
        rogue.send_multipart([b"no-such-task", orjson.dumps({"rseq": 1})])
        rogue.send_multipart([topic, b'{"rseq": 1, "kind": "log"\n[3]'])  # packed: two bad ones
        rogue.send(b"lonely frame")
    finally:
        rogue.close()
        ctx.term()
    task = supervisor.wait_final(task_id)
    assert task["status"] == "completed"
    events = supervisor.logs(task_id)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert [e["i"] for e in events if "i" in e] == list(range(1, 51))
    assert supervisor.call("health")["events_dropped"] >= 7
