"""How a task ends, each with its reason; the slot is released every time."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any

import psutil
import pytest

from tests.support.cgroups import assert_confined, why_no_cgroups
from tests.support.supervisor import SupervisorProcess


def _running(sup: SupervisorProcess, task_id: str) -> dict[str, Any]:
    """Wait until the runner itself reported ``running`` (its handlers are installed); on a
    host with cgroups it runs in its own job cgroup holding the daemon's limits."""
    task = sup.wait_task(task_id, lambda t: t["status"] == "running" and t["message"].startswith("running on"), 60)
    assert_confined(task["pid"], sup.settings)
    return task


def _then_follower_runs(sup: SupervisorProcess, follower: str) -> None:
    """With a limit of 1, the follower only runs once the first task released its slot."""
    assert sup.wait_final(follower)["status"] == "completed"
    resources = sup.call("resources")
    assert resources["running"] == 0 and resources["queue_length"] == 0


@pytest.fixture()
def one_slot(supervisor: SupervisorProcess) -> SupervisorProcess:
    supervisor.call("set_limits", limits={"cpu": {"diagnostic": 1}})
    return supervisor


def test_normal_end_completed(one_slot: SupervisorProcess) -> None:
    task_id = one_slot.submit(params={"events": 5})
    follower = one_slot.submit(params={})
    task = one_slot.wait_final(task_id)
    assert (task["status"], task["message"], task["progress"], task["exit_code"]) == ("completed", "completed", 100, 0)
    _then_follower_runs(one_slot, follower)


def test_exception_fails_with_error_and_traceback(one_slot: SupervisorProcess) -> None:
    task_id = one_slot.submit(params={"raise": "boom at step 3"})
    follower = one_slot.submit(params={})
    task = one_slot.wait_final(task_id)
    assert task["status"] == "failed"
    assert task["message"] == "RuntimeError: boom at step 3"
    events = one_slot.logs(task_id)
    assert any(
        e["level"] == "ERROR" and "Traceback" in e["message"] and "boom at step 3" in e["message"] for e in events
    )
    _then_follower_runs(one_slot, follower)


def test_operator_kill_9_fails_killed_by_signal(one_slot: SupervisorProcess) -> None:
    task_id = one_slot.submit(params={"sleep": 60})
    follower = one_slot.submit(params={})
    pid = _running(one_slot, task_id)["pid"]
    os.kill(pid, signal.SIGKILL)
    task = one_slot.wait_final(task_id)
    assert (task["status"], task["message"], task["exit_code"]) == ("failed", "killed by signal SIGKILL", -9)
    final = one_slot.logs(task_id)[-1]
    assert final["source"] == "supervisor" and final["status"] == "failed" and final["level"] == "ERROR"
    _then_follower_runs(one_slot, follower)


def test_operator_kill_term_cancels(one_slot: SupervisorProcess) -> None:
    task_id = one_slot.submit(params={"sleep": 60})
    follower = one_slot.submit(params={})
    pid = _running(one_slot, task_id)["pid"]
    os.kill(pid, signal.SIGTERM)
    task = one_slot.wait_final(task_id)
    assert task["status"] == "cancelled"
    _then_follower_runs(one_slot, follower)


def test_exit_codes_without_final_event(one_slot: SupervisorProcess) -> None:
    a = one_slot.submit(params={"exit_code": 0})
    b = one_slot.submit(params={"exit_code": 7})
    assert one_slot.wait_final(a)["message"] == "runner exited without reporting"
    task = one_slot.wait_final(b)
    assert (task["status"], task["message"], task["exit_code"]) == ("failed", "exited with code 7", 7)


@pytest.mark.timeout(120)
@pytest.mark.skipif(why_no_cgroups() is not None, reason=f"no job cgroups on this host: {why_no_cgroups()}")
def test_cgroup_oom_fails_with_limit(make_supervisor: Callable[..., SupervisorProcess]) -> None:
    sup = make_supervisor(RFUAV_JOB_MEMORY_MB="100")
    # At most the limit (the supervisor refuses more); with the interpreter it is over it.
    task_id = sup.submit(params={"memory_mb": 100, "sleep": 5})
    follower = sup.submit(params={})
    task = sup.wait_final(task_id)
    assert task["limits_enforced"] is True
    assert (task["status"], task["message"]) == ("failed", "out of memory (limit 100 MiB)")
    _then_follower_runs(sup, follower)


# -- cancel --------------------------------------------------------------------------------
def _job_processes(pgid: int) -> list[psutil.Process]:
    out = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(proc)
        except (ProcessLookupError, psutil.Error):
            continue
    return out


def _grandchild(sup: SupervisorProcess, task_id: str) -> int:
    sub_events = sup.logs(task_id)
    for e in sub_events:
        if "grandchild_pid" in e:
            return int(e["grandchild_pid"])
    raise AssertionError("no grandchild pid reported")


@pytest.mark.parametrize("uncooperative", [False, True], ids=["cooperative", "uncooperative"])
def test_cancel_leaves_nothing(one_slot: SupervisorProcess, uncooperative: bool) -> None:
    params = {"sleep": 60, "grandchild": True, "ignore_sigterm": uncooperative}
    task_id = one_slot.submit(params=params)
    follower = one_slot.submit(params={})
    pid = _running(one_slot, task_id)["pid"]
    one_slot.wait_task(task_id, lambda t: any("grandchild_pid" in e for e in one_slot.logs(task_id)), 30, "grandchild")
    grandchild = _grandchild(one_slot, task_id)
    grandchild_proc = psutil.Process(grandchild)
    cgroups = assert_confined(pid, one_slot.settings)
    if cgroups:  # the grandchild is confined with the runner
        assert all(grandchild in map(int, (d / "cgroup.procs").read_text().split()) for d in cgroups.values())
    reply = one_slot.call("cancel", task_id=task_id)
    assert reply["task"]["task_id"] == task_id
    task = one_slot.wait_final(task_id, timeout=60)
    assert task["status"] == "cancelled"
    messages = [e["message"] for e in one_slot.logs(task_id)]
    assert "cancel requested: cancelled on request" in messages
    if uncooperative:
        assert any("did not stop within 2 s: killing it" in m for m in messages)
    assert _job_processes(pid) == []
    assert not grandchild_proc.is_running() or grandchild_proc.status() == psutil.STATUS_ZOMBIE
    for d in cgroups.values():
        assert not d.exists(), f"cgroup {d} left behind"
    _then_follower_runs(one_slot, follower)


def test_cancel_pending_and_conflicts(one_slot: SupervisorProcess) -> None:
    blocker = one_slot.submit(params={"sleep": 60})
    waiting = one_slot.submit(params={})
    one_slot.wait_task(blocker, lambda t: t["status"] == "running")
    task = one_slot.call("cancel", task_id=waiting)["task"]
    assert (task["status"], task["message"]) == ("cancelled", "cancelled on request")
    with pytest.raises(Exception) as err:
        one_slot.call("cancel", task_id=waiting)
    assert getattr(err.value, "code", None) == "conflict"
    with pytest.raises(Exception) as err:
        one_slot.call("delete", task_id=blocker)
    assert getattr(err.value, "code", None) == "conflict"
    one_slot.call("cancel", task_id=blocker)
    assert one_slot.wait_final(blocker)["status"] == "cancelled"
    assert one_slot.call("delete", task_id=blocker) == {"task_id": blocker}
    with pytest.raises(Exception) as err:
        one_slot.get(blocker)
    assert getattr(err.value, "code", None) == "not_found"
