"""``ps``: a real runner (cold start: no fork server needed) with a grandchild, seen through
psutil, its cgroups read back from the kernel, GPU memory per pid."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from supervisor.cgroups import Cgroups, JobLimits
from supervisor.gpu import Gpus
from supervisor.ps import runner_view
from supervisor.spawner import RunnerHandle, Spawner
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
    view = runner_view(handle, task)
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
    assert runner["cpu_percent"] >= 0.0
    assert [p["pid"] for p in rest] == [running.grandchild]
    assert rest[0]["ppid"] == handle.pid and rest[0]["children"] == []
    no_gpu = not Gpus().available
    if no_gpu:
        assert runner["gpu_memory"] is None  # unknown: no NVML here, not "0 bytes"

    # A second look measures CPU since the first one.
    again = runner_view(handle, task)
    assert again["processes"][0]["pid"] == handle.pid

    limits = view["limits"]
    assert limits["enforced"] is handle.limits_enforced
    if handle.limits_enforced:
        assert limits["memory_limit_bytes"] == 256 << 20
        assert limits["pids_limit"] == 32
        assert limits["cpus"] == 1.0
        assert limits["pids_current"] >= 2  # tasks (threads) of the runner and its grandchild
        assert limits["memory_usage_bytes"] > 0


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_ps_reports_gpu_memory_per_pid_from_the_given_map(running: Running) -> None:
    view = runner_view(running.handle, running.task, gpu_memory={running.handle.pid: 512 << 20})
    by_pid = {p["pid"]: p for p in view["processes"]}
    assert by_pid[running.handle.pid]["gpu_memory"] == 512 << 20
    assert by_pid[running.grandchild]["gpu_memory"] == 0


def test_cgroups_are_read_back_from_the_kernel_files() -> None:
    cgroups = Cgroups("tst0000e")
    cgroups.prepare()
    if cgroups.unavailable:
        pytest.skip(f"cgroups not usable here: {cgroups.unavailable}")
    job = cgroups.create("ps", JobLimits(memory_mb=64, cpus=0.25, pids=5))
    try:
        # Change a limit behind the spawner's back: ps shows what the kernel enforces.
        (Path(job.dirs["pids"]) / "pids.max").write_text("7")
        back = job.read_back()
        assert back["pids_limit"] == 7 and back["memory_limit_bytes"] == 64 << 20 and back["cpus"] == 0.25
    finally:
        assert job.remove()
