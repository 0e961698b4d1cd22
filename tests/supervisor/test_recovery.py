"""The daemon's own end: kill -9 and restart (adoption, a runner that finished or was lost
meanwhile, re-queue), SIGTERM shutdown."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.cgroups import assert_confined
from tests.support.processes import wait_gone
from tests.support.supervisor import SupervisorProcess


def _assert_continuous(events: list[dict[str, Any]]) -> None:
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    rseqs = [e["rseq"] for e in events if "rseq" in e]
    assert rseqs == list(range(1, len(rseqs) + 1)), "a runner event is missing"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode", ["cold", "warm"])
def test_kill_9_restart_adopts_running_and_runs_pending(
    make_supervisor: Callable[..., SupervisorProcess], mode: str
) -> None:
    supervisor = make_supervisor(RFUAV_START_MODE=mode)
    supervisor.call("set_limits", limits={"cpu": {"diagnostic": 1}})
    # 400 events over 4 s: some are emitted while the supervisor is down.
    running = supervisor.submit(params={"events": 400, "rate": 100})
    pending = [supervisor.submit(params={"events": 10}) for _ in range(2)]
    task = supervisor.wait_task(
        running, lambda t: t["status"] == "running" and t["last_seq"] >= 20, 120, "events flowing"
    )
    runner_pid = task["pid"]
    cgroups = assert_confined(runner_pid, supervisor.settings)
    # A warm daemon's fork server listens in its runtime directory, not in a ``pymp-*`` folder
    # of /tmp that a daemon killed with SIGKILL would leave behind each time.
    listening = supervisor.settings.runtime_dir / "forkserver"
    before = sorted(listening.glob("listener-*"))
    assert len(before) == (mode == "warm"), before
    assert supervisor.kill(signal.SIGKILL) == -signal.SIGKILL
    supervisor.start()
    task = supervisor.wait_final(running, timeout=90)
    assert (task["status"], task["pid"]) == ("completed", runner_pid)
    events = supervisor.logs(running)
    _assert_continuous(events)
    assert [e["i"] for e in events if "i" in e] == list(range(1, 401))
    assert any(e["message"] == f"adopted after a supervisor restart (pid {runner_pid})" for e in events)
    for d in cgroups.values():  # the adopted runner's cgroups went with it
        assert not d.exists(), f"cgroup {d} of the adopted runner left behind"
    for t in pending:
        assert supervisor.wait_final(t, timeout=120)["status"] == "completed"
        _assert_continuous(supervisor.logs(t))
    assert supervisor.call("resources")["running"] == 0
    after = sorted(listening.glob("listener-*"))  # the killed daemon's socket went at the restart
    assert len(after) == len(before) and not set(after) & set(before), (before, after)


@pytest.mark.timeout(180)
def test_runner_that_finished_while_down_is_recovered_from_its_journal(supervisor: SupervisorProcess) -> None:
    # 200 events at 100/s. The runner is stopped (SIGSTOP) before the supervisor is killed, so
    # it can only finish while no supervisor runs; the restarted one finds it gone and takes
    # its end (and every event it missed) from the runner's journal.
    task_id = supervisor.submit(params={"events": 200, "rate": 100})
    task = supervisor.wait_task(
        task_id, lambda t: t["status"] == "running" and t["last_seq"] >= 10, 60, "events flowing"
    )
    pid = task["pid"]
    cgroups = assert_confined(pid, supervisor.settings)
    os.kill(pid, signal.SIGSTOP)
    try:
        assert supervisor.kill(signal.SIGKILL) == -signal.SIGKILL
    finally:
        os.kill(pid, signal.SIGCONT)
    assert wait_gone([pid], timeout=60) == [], "the runner did not finish without its supervisor"
    supervisor.start()
    # The recovery path ran (the job did not end before the kill): the restart found it gone.
    assert f"task {task_id}: runner (pid {pid}) not found after restart" in supervisor.log_text()
    task = supervisor.get(task_id)
    assert (task["status"], task["message"], task["progress"]) == ("completed", "completed", 100)
    events = supervisor.logs(task_id)
    _assert_continuous(events)
    assert [e["i"] for e in events if "i" in e] == list(range(1, 201))
    assert (events[-1]["kind"], events[-1]["status"]) == ("status", "completed")
    assert task["last_seq"] == events[-1]["seq"] == len(events)
    assert not any("lost" in e["message"] or "adopted" in e["message"] for e in events)
    for d in cgroups.values():
        assert not d.exists(), f"leftover cgroup {d} not removed"
    assert supervisor.call("resources")["running"] == 0


@pytest.mark.timeout(180)
def test_runner_lost_while_down_fails_with_reason(supervisor: SupervisorProcess) -> None:
    task_id = supervisor.submit(params={"sleep": 60})
    task = supervisor.wait_task(task_id, lambda t: t["status"] == "running" and t["message"].startswith("running on"))
    cgroups = assert_confined(task["pid"], supervisor.settings)
    supervisor.kill(signal.SIGKILL)
    os.kill(task["pid"], signal.SIGKILL)
    assert wait_gone([task["pid"]]) == []  # dead before the restart looks for it
    supervisor.start()
    task = supervisor.get(task_id)
    assert (task["status"], task["message"]) == ("failed", "runner lost while the supervisor was down")
    for d in cgroups.values():
        assert not d.exists(), f"leftover cgroup {d} not removed"
    _assert_continuous(supervisor.logs(task_id))


@pytest.mark.timeout(180)
def test_sigterm_cancels_running_keeps_pending(supervisor: SupervisorProcess) -> None:
    supervisor.call("set_limits", limits={"cpu": {"diagnostic": 1}})
    running = supervisor.submit(params={"sleep": 60})
    pending = supervisor.submit(params={"events": 3})
    supervisor.wait_task(running, lambda t: t["status"] == "running" and t["message"].startswith("running on"))
    assert supervisor.stop() == 0
    supervisor.start()
    task = supervisor.get(running)
    assert task["status"] == "cancelled"
    assert supervisor.wait_final(pending)["status"] == "completed"


@pytest.mark.timeout(180)
def test_second_signal_kills_jobs_at_once(make_supervisor: Callable[..., SupervisorProcess]) -> None:
    supervisor = make_supervisor(RFUAV_GRACE_SECONDS="120")
    task_id = supervisor.submit(params={"sleep": 300, "ignore_sigterm": True})
    supervisor.wait_task(task_id, lambda t: t["status"] == "running" and t["message"].startswith("running on"))
    assert supervisor.proc is not None
    supervisor.proc.send_signal(signal.SIGTERM)
    # Still serving while it waits out the grace period for the uncooperative job.
    supervisor.wait_task(
        task_id,
        lambda t: any("shutting down" in e["message"] for e in supervisor.logs(task_id)),
        60,
        "shutdown cancel",
    )
    supervisor.proc.send_signal(signal.SIGTERM)
    assert supervisor.proc.wait(60) == 0  # far sooner than the 120 s grace
    supervisor.start()
    task = supervisor.get(task_id)
    assert (task["status"], task["message"]) == ("cancelled", "cancelled: the supervisor is shutting down")


@pytest.mark.timeout(180)
def test_shutdown_command_stops_like_sigterm(supervisor: SupervisorProcess) -> None:
    supervisor.call("set_limits", limits={"cpu": {"diagnostic": 1}})
    running = supervisor.submit(params={"sleep": 60})
    pending = supervisor.submit(params={"events": 3})
    supervisor.wait_task(running, lambda t: t["status"] == "running" and t["message"].startswith("running on"))
    assert supervisor.call("shutdown") == {"stopping": True}
    assert supervisor.proc is not None and supervisor.proc.wait(60) == 0
    assert "shutdown requested: shutting down" in supervisor.log_text()
    supervisor.start()
    assert supervisor.get(running)["status"] == "cancelled"
    assert supervisor.wait_final(pending)["status"] == "completed"
