"""A runner bound to its host (``JobSpec.host_pid``: a Ray runner host) does not outlive it.

The host here is a stand-in (``tests.runner.harness``, ``hosted=True``): a process of its own
that starts the runner, as a Ray host does, and that the test kills with SIGKILL, as a node's
Ray processes die. The runner must then stop as if cancelled (its final event says so), or be
killed with its whole process group once the grace is over when it does not stop.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psutil

from tests.runner.harness import RunnerProcess


def _stderr(task_dir: Path) -> str:
    return (task_dir / "stderr.log").read_text(errors="replace")


def test_a_runner_stops_as_if_cancelled_once_its_host_is_gone(tmp_path: Path) -> None:
    with RunnerProcess("diagnostic", {"sleep": 600}, tmp_path, hosted=True) as rp:
        rp.wait_for(lambda e: e["message"].startswith("sleeping"), timeout=60)
        host_pid = rp.kill_host()
        final = rp.finish(timeout=60)
    assert final["status"] == "cancelled", final
    assert f"runner host (pid {host_pid}) is gone: stopping" in _stderr(tmp_path)


def test_a_runner_that_ignores_the_stop_is_killed_with_its_group_after_the_grace(tmp_path: Path) -> None:
    params = {"ignore_sigterm": True, "grandchild": True, "sleep": 600}
    with RunnerProcess("diagnostic", params, tmp_path, hosted=True, grace_seconds=1.0) as rp:
        grandchild = rp.wait_for(lambda e: "grandchild_pid" in e, timeout=60)["grandchild_pid"]
        rp.wait_for(lambda e: e["message"].startswith("sleeping"), timeout=60)
        family = [psutil.Process(rp.proc.pid), psutil.Process(grandchild)]
        rp.kill_host()
        gone, alive = psutil.wait_procs(family, timeout=60)
        assert not alive, alive
        assert rp.final is None  # killed: no final event
    assert "SIGKILL to the group after 1 s" in _stderr(tmp_path)


def test_a_runner_whose_host_is_not_its_parent_takes_it_for_gone_and_stops(tmp_path: Path) -> None:
    """The host died before the runner looked (the runner's parent is someone else by then):
    the pid, perhaps another process's now, is not watched; the runner stops at once."""
    stranger = subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"])
    try:
        with RunnerProcess("diagnostic", {"sleep": 600}, tmp_path, host_pid=stranger.pid) as rp:
            final = rp.finish(timeout=60)
        assert final["status"] == "cancelled", final
        assert stranger.poll() is None  # (never signalled)
    finally:
        stranger.kill()
        stranger.wait(30)
    assert f"runner host (pid {stranger.pid}) is gone" in _stderr(tmp_path)
