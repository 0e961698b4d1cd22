"""``ps``: a real runner (cold start: no fork server needed) with a grandchild, seen through
psutil, its cgroups read back from the kernel, GPU memory per pid (from NVML, or from a fake
NVML at the ``pynvml`` import on a host without a GPU)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import pytest_asyncio

from supervisor.cgroups import Cgroups, JobLimits
from supervisor.gpu import Gpus
from supervisor.handle import RunnerHandle
from supervisor.ps import Ps
from supervisor.spawner import Spawner
from tests.support.cgroups import assert_job_cgroup, why_no_cgroups
from tests.support.processes import (
    EventSink,
    diagnostic_spec,
    remove_dir,
    settings_for,
    short_dir,
)


@dataclass
class Task:
    task_id: str
    task_type: str
    device: str | None
    started_at: float | None


@dataclass
class Running:
    handle: RunnerHandle
    task: Task
    grandchild: int


@pytest_asyncio.fixture()
async def running() -> AsyncIterator[Running]:
    home = short_dir()
    sink = EventSink(home)
    spawner = Spawner(settings_for(home, "cold"))
    await spawner.start()
    spec = diagnostic_spec(home, sink.endpoint, {"grandchild": True, "sleep": 120})
    started = time.time()
    handle = await spawner.spawn(spec, JobLimits(memory_mb=256, cpus=1, pids=32))
    try:
        event = await sink.until(spec.task_id, lambda e: "grandchild_pid" in e)
        await sink.until(spec.task_id, lambda e: e.get("message", "").startswith("sleeping"))
        yield Running(handle, Task(spec.task_id, "diagnostic", "cpu", started), event["grandchild_pid"])
    finally:
        handle.kill()
        await asyncio.wait_for(handle.wait(), 30)
        handle.cleanup()
        sink.close()
        remove_dir(home)


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_ps_shows_the_runner_tree_cgroups_and_limits(running: Running) -> None:
    handle, task = running.handle, running.task
    gpus = Gpus()  # the daemon's, passed in: ps asks it for GPU memory per process
    try:
        ps = Ps(gpus)
        view = ps.runner_view(handle, task, ps.gpu_memory())
        gpu_available = gpus.available
    finally:
        gpus.close()
    assert view["task_id"] == task.task_id and view["task_type"] == "diagnostic"
    assert view["device"] == "cpu" and view["pid"] == handle.pid
    assert view["started_at"].endswith("+00:00") and view["age"] >= 0
    assert view["cgroup"] == handle.cgroup

    runner, *rest = view["processes"]
    assert runner["pid"] == handle.pid
    assert runner["title"] == f"rfuav-runner diagnostic {task.task_id}"
    assert runner["status"] in ("sleeping", "running")
    assert runner["rss"] > 1 << 20 and runner["threads"] >= 1
    assert runner["open_files"] >= 3  # stdout.log, stderr.log, events.jsonl
    assert runner["children"] == [running.grandchild]
    # The first look at a process is its lifetime average: starting a runner takes CPU.
    assert runner["cpu_percent"] > 0.0
    assert [p["pid"] for p in rest] == [running.grandchild]
    assert rest[0]["ppid"] == handle.pid and rest[0]["children"] == []
    if gpu_available:
        assert runner["gpu_memory"] == 0  # NVML answers; the diagnostic job uses no GPU
    else:
        assert runner["gpu_memory"] is None  # unknown: no NVML here, not "0 bytes"

    limits = view["limits"]
    assert limits["enforced"] is handle.limits_enforced
    if why_no_cgroups() is None:
        assert handle.limits_enforced is True
        assert_job_cgroup(handle.pid, memory_mb=256, pids=32, cpus=1)
        assert limits["memory_limit_bytes"] == 256 << 20
        assert limits["pids_limit"] == 32
        assert limits["cpus"] == 1.0
        assert limits["pids_current"] >= 2  # tasks (threads) of the runner and its grandchild
        assert limits["memory_usage_bytes"] > 0


@pytest.fixture()
def burner() -> Iterator[subprocess.Popen[bytes]]:
    """A child that burns 0.3 s of CPU and stops itself (SIGSTOP), twice."""
    code = (
        "import os, signal, time\n"
        "for _ in range(2):\n"
        "    t = time.process_time()\n"
        "    while time.process_time() - t < 0.3: pass\n"
        "    os.kill(os.getpid(), signal.SIGSTOP)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    yield proc
    proc.kill()
    proc.wait(10)


def _stopped(proc: subprocess.Popen[bytes]) -> None:
    """Wait for our child to stop itself (it uses no CPU while stopped)."""
    pid, status = os.waitpid(proc.pid, os.WUNTRACED)
    assert pid == proc.pid and os.WIFSTOPPED(status), status


@pytest.mark.timeout(60)
def test_cpu_percent_is_the_share_since_the_previous_look(burner: subprocess.Popen[bytes]) -> None:
    # Each ps looks through new psutil objects, as runner_view does: what it measured last time
    # must be found again (by the same Ps) by pid and start time.
    gpus = Gpus()
    ps = Ps(gpus)
    gpus.close()

    def look() -> float:
        entry = ps.process_entry(psutil.Process(burner.pid), None)
        assert entry["pid"] == burner.pid and entry["status"] in ("stopped", "running", "sleeping")
        return float(entry["cpu_percent"])

    _stopped(burner)
    assert look() > 0.0  # the first look: its lifetime share (0.3 s of CPU in it)
    assert look() == 0.0  # stopped since: nothing (a lifetime figure would not be 0)
    os.kill(burner.pid, signal.SIGCONT)
    _stopped(burner)
    assert look() > 0.0  # 0.3 s of CPU since the previous look


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_ps_shows_each_process_gpu_memory_summed_over_gpus_from_nvml(
    running: Running, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A fake NVML at the pynvml import (tests/support/fake_nvml): two GPUs; the runner uses
    # both (compute on one, compute and graphics on the other), another process one, and the
    # driver hides one process's figure (None: not counted).
    runner, grandchild = running.handle.pid, running.grandchild
    procs = tmp_path / "procs.json"
    procs.write_text(json.dumps({
        "0": {"compute": [[runner, 300 << 20], [4_000_000, 64 << 20]], "graphics": [[runner, 12 << 20]]},
        "1": {"compute": [[runner, 200 << 20], [grandchild, None]], "graphics": []},
    }))  # fmt: skip
    gpu = {"name": "Fake", "total": 8 << 30, "used": 1 << 30, "free": 7 << 30}
    monkeypatch.setenv("FAKE_NVML", json.dumps({"gpus": [gpu, gpu], "procs_file": str(procs)}))
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "support" / "fake_nvml"))
    monkeypatch.delitem(sys.modules, "pynvml", raising=False)
    gpus = Gpus()
    try:
        assert gpus.count == 2
        memory = gpus.pids_memory()
        assert memory == {runner: 512 << 20, 4_000_000: 64 << 20}
        (view,) = Ps(gpus).views([(running.task, running.handle)])  # asks the Gpus given
    finally:
        gpus.close()
    by_pid = {p["pid"]: p["gpu_memory"] for p in view["processes"]}
    assert by_pid == {runner: 512 << 20, grandchild: 0}


@pytest.mark.skipif(why_no_cgroups() is not None, reason=f"no job cgroups on this host: {why_no_cgroups()}")
def test_cgroups_are_read_back_from_the_kernel_files() -> None:
    cgroups = Cgroups("tst0000e")
    cgroups.prepare()
    assert cgroups.unavailable == ""
    job = cgroups.create("ps", JobLimits(memory_mb=64, cpus=0.25, pids=5))
    try:
        # Change a limit behind the spawner's back: ps shows what the kernel enforces.
        (Path(job.dirs["pids"]) / "pids.max").write_text("7")
        back = job.read_back()
        assert back["pids_limit"] == 7 and back["memory_limit_bytes"] == 64 << 20 and back["cpus"] == 0.25
    finally:
        assert job.remove()
