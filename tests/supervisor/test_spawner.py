"""The spawner against real runners: a real fork server, real `python -m runner` processes, a
real SUB socket standing in for the supervisor, real cgroups (as root; skipped with the reason
where they cannot be created).

One warm spawner (and its fork server, which takes seconds to preload torch) serves the whole
module, so every test here shares the module's event loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import pytest_asyncio

from supervisor.cgroups import Cgroups, JobLimits, instance_key
from supervisor.executor import ExitInfo
from supervisor.handle import RunnerHandle
from supervisor.spawner import Spawner
from tests.support.cgroups import assert_cpu_weight, why_no_cgroups
from tests.support.processes import (
    EventSink,
    diagnostic_spec,
    remove_dir,
    settings_for,
    short_dir,
    wait_gone,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

LIMITS = JobLimits(memory_mb=256, cpus=0.5, pids=64)


class Env:
    """The module's shared world: a home dir, an event sink, a warm and a cold spawner."""

    def __init__(self, home: Path, sink: EventSink, warm: Spawner, cold: Spawner) -> None:
        self.home = home
        self.sink = sink
        self.spawners = {"warm": warm, "cold": cold}
        #: Every handle a test made; teardown kills what a failed test left running.
        self.handles: list[RunnerHandle] = []

    async def close(self) -> None:
        for handle in self.handles:
            if not handle.exited:
                handle.kill()
                await asyncio.wait_for(handle.wait(), 30)
            handle.cleanup()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def env() -> AsyncIterator[Env]:
    home = short_dir()
    sink = EventSink(home)
    warm = Spawner(settings_for(home, "warm"))
    cold = Spawner(settings_for(home, "cold"))
    await asyncio.wait_for(warm.start(), 200)
    await cold.start()
    assert warm.mode == "warm", warm.warm_failure
    world = Env(home, sink, warm, cold)
    yield world
    await world.close()
    await warm.stop()
    await cold.stop()
    sink.close()
    remove_dir(home)


#: Job cgroups can be made here (probed independently of the spawner): every job must be
#: confined; the tests that need them skip, with the reason, only on a host without.
HAS_CGROUPS = why_no_cgroups() is None
needs_cgroups = pytest.mark.skipif(not HAS_CGROUPS, reason=f"no job cgroups on this host: {why_no_cgroups()}")


async def finish(handle: RunnerHandle, timeout: float = 60) -> ExitInfo:
    try:
        info = await asyncio.wait_for(handle.wait(), timeout)
    except TimeoutError:
        raise AssertionError(f"runner {handle.pid} did not end in {timeout} s: {describe(handle.pid)}") from None
    handle.cleanup()
    return info


def describe(pid: int) -> str:
    """What a runner that failed to end is doing (for the failure message)."""
    try:
        proc = psutil.Process(pid)
        threads = [(t.id, Path(f"/proc/{pid}/task/{t.id}/wchan").read_text()) for t in proc.threads()]
        return (
            f"{pid}: {proc.cmdline()}, status {proc.status()}, ppid {proc.ppid()}, pgid {os.getpgid(pid)}, "
            f"threads (tid, wchan) {threads}"
        )
    except (psutil.Error, OSError) as exc:
        return f"gone ({exc})"


async def spawn(
    env: Env, mode: str, params: dict[str, Any], limits: JobLimits = LIMITS, **fields: Any
) -> tuple[Any, RunnerHandle]:
    spec = diagnostic_spec(env.home, env.sink.endpoint, params, **fields)
    handle = await env.spawners[mode].spawn(spec, limits)
    env.handles.append(handle)
    return spec, handle


# -- start, isolation, settings ---------------------------------------------------------------
@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["warm", "cold"])
async def test_job_runs_isolated_with_its_settings(env: Env, mode: str) -> None:
    spec, handle = await spawn(
        env, mode, {"report": True, "events": 3}, torch_threads=2, opencv_threads=1, cuda_visible_devices=""
    )
    sink = env.sink
    running = await sink.until(spec.task_id, lambda e: e.get("status") == "running")
    assert running["rseq"] == 1
    report = (await sink.until(spec.task_id, lambda e: "process" in e))["process"]
    assert report["pid"] == handle.pid
    assert report["sid"] == handle.pid and report["pgid"] == handle.pid  # own session and group
    assert report["title"] == f"rfuav-runner diagnostic {spec.task_id}"
    assert report["cuda_visible_devices"] == ""
    assert handle.limits_enforced is HAS_CGROUPS and (handle.warning is None) is HAS_CGROUPS
    if HAS_CGROUPS:  # the runner itself found its job cgroups (it joined them before any work)
        lines = {line.split(":")[1]: line for line in report["cgroup"]}
        own = [lines[k] for k in ("memory", "pids") if k in lines] or [lines[""]]  # v1, or v2 alone
        assert all(line.endswith(f"/rfuav-{instance_key(env.home)}-{spec.task_id}") for line in own), own
    if mode == "warm":  # preloaded: the thread settings were applied by call after the fork
        assert report["torch_threads"] == 2
        assert report["opencv_threads"] == 1
    done = await sink.until(spec.task_id, lambda e: e.get("status") == "completed")
    assert done["rseq"] == 3 + 2 + 2  # running, report, 3 logs, progress, completed
    info = await finish(handle)
    assert info == ExitInfo(code=0, oom_killed=False, memory_limit_mb=LIMITS.memory_mb if HAS_CGROUPS else 0)
    spec_file = Path(spec.task_dir) / "spec.json"
    assert oct(spec_file.stat().st_mode & 0o777) == "0o600"


@needs_cgroups
@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["warm", "cold"])
async def test_job_is_in_its_own_cgroups_below_ours_with_limits(env: Env, mode: str) -> None:
    spec, handle = await spawn(env, mode, {"report": True, "sleep": 30})
    report = (await env.sink.until(spec.task_id, lambda e: "process" in e))["process"]
    assert handle.limits_enforced and handle.warning is None
    own = Cgroups("x").hierarchies
    assert set(handle.cgroup) >= {"memory", "cpu", "pids"}
    lines = {line.split(":")[1]: line.split(":", 2)[2] for line in report["cgroup"]}
    for name, path in handle.cgroup.items():
        directory = Path(path)
        assert directory.parent == own[name].own  # directly below this process's own cgroup
        assert directory.name == f"rfuav-{instance_key(env.home)}-{spec.task_id}"
        assert handle.pid in [int(p) for p in (directory / "cgroup.procs").read_text().split()]
        key = "" if name == "unified" else name
        assert lines[key].endswith("/" + directory.name)
    memory = Path(handle.cgroup["memory"])
    assert int((memory / "memory.limit_in_bytes").read_text()) == 256 << 20
    assert (Path(handle.cgroup["pids"]) / "pids.max").read_text().strip() == "64"
    assert int((Path(handle.cgroup["cpu"]) / "cpu.cfs_quota_us").read_text()) == 50_000
    handle.terminate()
    info = await finish(handle)
    assert info.code == 0  # cooperative: the runner stopped at its safe point
    assert await env.sink.until(spec.task_id, lambda e: e.get("status") == "cancelled")
    assert not any(Path(p).exists() for p in handle.cgroup.values())


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["warm", "cold"])
async def test_job_runs_nicer_than_us_with_its_cpu_weight(env: Env, mode: str) -> None:
    """The daemon ahead of its jobs: the runner lowered its own priority (every thread, its
    autogroup) before any work, and its CPU cgroup carries the weight."""
    limits = dataclasses.replace(LIMITS, cpu_weight=30)
    spec, handle = await spawn(env, mode, {"report": True, "sleep": 30}, limits, nice=7)
    report = (await env.sink.until(spec.task_id, lambda e: "process" in e))["process"]
    # Our nice + 7: the fork server and the cold runner both start at ours.
    wanted = min(19, os.getpriority(os.PRIO_PROCESS, 0) + 7)
    assert report["nice"] == wanted
    assert set(report["thread_nice"].values()) == {wanted}, report["thread_nice"]
    # Seen from outside: every thread, those started after the runner lowered itself too (zmq's).
    threads = os.listdir(f"/proc/{handle.pid}/task")
    assert len(threads) > 1 and {os.getpriority(os.PRIO_PROCESS, int(t)) for t in threads} == {wanted}
    if report["autogroup"] is not None:  # its own session's group, as nice as the runner
        assert report["autogroup"].endswith(f" nice {wanted}"), report["autogroup"]
    if not assert_cpu_weight(handle.pid, 30) and HAS_CGROUPS:
        # No CPU controller here: said in the task, never a reason to refuse it.
        assert handle.warning is not None and "weight: this host offers no cpu controller" in handle.warning
    handle.terminate()
    assert (await finish(handle)).code == 0


# -- exit codes ---------------------------------------------------------------------------------
@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["warm", "cold"])
async def test_exit_codes_are_decoded(env: Env, mode: str) -> None:
    # A plain non-zero exit, and a job failure (the runner's EXIT_FAILED).
    _, h7 = await spawn(env, mode, {"exit_code": 7})
    _, hraise = await spawn(env, mode, {"raise": "boom"})
    # Killed by SIGKILL and by SIGTERM (default action): -signum.
    s9, h9 = await spawn(env, mode, {"sleep": 60})
    s15, h15 = await spawn(env, mode, {"sleep": 60, "default_sigterm": True})
    await env.sink.until(s9.task_id, lambda e: e.get("message", "").startswith("sleeping"))
    await env.sink.until(s15.task_id, lambda e: e.get("message", "").startswith("sleeping"))
    h9.kill()
    h15.terminate()
    codes = [(await finish(h)).code for h in (h7, hraise, h9, h15)]
    assert codes == [7, 1, -signal.SIGKILL, -signal.SIGTERM]


# -- memory limit ---------------------------------------------------------------------------
@needs_cgroups
@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["warm", "cold"])
async def test_memory_limit_is_enforced_by_oom_kill(env: Env, mode: str) -> None:
    _, handle = await spawn(env, mode, {"memory_mb": 400, "sleep": 30}, JobLimits(memory_mb=200, cpus=0, pids=64))
    info = await finish(handle)
    assert info.code == -signal.SIGKILL
    assert info.oom_killed is True
    assert info.memory_limit_mb == 200
    # The control: the same job under a limit it fits in completes normally.
    _, handle = await spawn(env, mode, {"memory_mb": 50}, JobLimits(memory_mb=200, cpus=0, pids=64))
    info = await finish(handle)
    assert info == ExitInfo(code=0, oom_killed=False, memory_limit_mb=200)


# -- kill -----------------------------------------------------------------------------------
@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["warm", "cold"])
@pytest.mark.parametrize("setsid", [False, True], ids=["grandchild", "setsid-grandchild"])
async def test_kill_leaves_nothing_of_an_uncooperative_job(env: Env, mode: str, setsid: bool) -> None:
    if setsid and not HAS_CGROUPS:
        pytest.skip(f"a grandchild that left the session is found through its cgroup: {why_no_cgroups()}")
    params = {"ignore_sigterm": True, "grandchild": True, "grandchild_setsid": setsid, "sleep": 120}
    spec, handle = await spawn(env, mode, params)
    started = await env.sink.until(spec.task_id, lambda e: "grandchild_pid" in e)
    await env.sink.until(spec.task_id, lambda e: e.get("message", "").startswith("sleeping"))
    grandchild = started["grandchild_pid"]
    assert set(handle.alive_pids()) >= {handle.pid, grandchild}
    if setsid:
        assert os.getsid(grandchild) == grandchild != handle.pid
    handle.terminate()  # ignored by both
    assert psutil.pid_exists(grandchild)
    handle.kill()
    info = await finish(handle)
    assert info.code == -signal.SIGKILL
    assert wait_gone([handle.pid, grandchild]) == []  # SIGKILL was sent; exiting takes a moment
    left = handle.alive_pids()
    assert left == [], [describe(pid) for pid in left]
    assert not any(Path(p).exists() for p in handle.cgroup.values())


@pytest.mark.timeout(120)
async def test_without_cgroups_the_job_runs_and_says_limits_are_not_enforced(env: Env) -> None:
    spawner = Spawner(settings_for(env.home, "cold"))
    spawner.cgroups = Cgroups(instance_key(env.home), hierarchies={})  # as on a host without any
    spec = diagnostic_spec(env.home, env.sink.endpoint, {"ignore_sigterm": True, "grandchild": True, "sleep": 120})
    handle = await spawner.spawn(spec, LIMITS)
    env.handles.append(handle)
    assert handle.limits_enforced is False
    assert handle.cgroup == {}
    assert handle.warning is not None and handle.warning.startswith("cgroup limits not enforced: ")
    assert "no cgroup hierarchy mounted" in handle.warning
    started = await env.sink.until(spec.task_id, lambda e: "grandchild_pid" in e)
    handle.kill()  # the process group still reaches the grandchild
    info = await finish(handle)
    assert info == ExitInfo(code=-signal.SIGKILL, oom_killed=False, memory_limit_mb=0)
    assert wait_gone([handle.pid, started["grandchild_pid"]]) == []


# -- adopt ----------------------------------------------------------------------------------
@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["warm", "cold"])
async def test_a_new_spawner_adopts_a_running_runner(env: Env, mode: str) -> None:
    spec, old = await spawn(env, mode, {"sleep": 120})
    await env.sink.until(spec.task_id, lambda e: e.get("message", "").startswith("sleeping"))
    pid, create_time, cgroup = old.pid, old.create_time, dict(old.cgroup)
    old.detach()  # the old supervisor is gone
    env.handles.remove(old)
    del old

    restarted = Spawner(settings_for(env.home, "cold"))
    assert restarted.adopt(pid, create_time + 5.0, cgroup) is None  # same pid, another process
    # A recorded cgroup that is not one of this instance's job cgroups is never touched.
    foreign = restarted.adopt(pid, create_time, {"memory": "/sys/fs/cgroup/memory"})
    assert foreign is not None and foreign.cgroup == {}
    foreign.detach()
    handle = restarted.adopt(pid, create_time, cgroup)
    assert handle is not None
    env.handles.append(handle)
    assert handle.pid == pid and handle.cgroup == cgroup
    assert handle.alive_pids() == [pid]
    assert not handle.exited
    handle.terminate()
    info = await finish(handle)
    assert info.code is None  # only the runner's parent could read its status
    assert await env.sink.until(spec.task_id, lambda e: e.get("status") == "cancelled")
    assert not any(Path(p).exists() for p in cgroup.values())
    assert restarted.adopt(pid, create_time, cgroup) is None  # gone now


# -- the fork server ----------------------------------------------------------------------------
@pytest.mark.timeout(300)
async def test_fork_server_survives_crashing_jobs_and_is_replaced_when_it_dies(env: Env) -> None:
    warm = env.spawners["warm"]
    server = warm.server_pid
    assert server is not None
    _, crash = await spawn(env, "warm", {"exit_code": 139})
    assert (await finish(crash)).code == 139
    spec, running = await spawn(env, "warm", {"sleep": 120})
    await env.sink.until(spec.task_id, lambda e: e.get("message", "").startswith("sleeping"))
    assert warm.server_pid == server  # survived the crash

    started_before = warm.servers_started
    os.kill(server, signal.SIGKILL)
    # A job still running when its fork server dies is waited on through its pid.
    running.terminate()
    info = await finish(running)
    assert info.code is None
    assert await env.sink.until(spec.task_id, lambda e: e.get("status") == "cancelled")
    # The next spawn waits for the replacement to be ready, then starts warm.
    spec, handle = await spawn(env, "warm", {"report": True})
    report = (await env.sink.until(spec.task_id, lambda e: "process" in e))["process"]
    assert "torch_threads" in report  # forked from a preloaded server, not started cold
    assert (await finish(handle)).code == 0
    assert warm.servers_started == started_before + 1
    assert warm.server_pid not in (None, server)
    assert warm.mode == "warm"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("preload", [["rfuav_no_such_module"], ["tests.support.failing_preload"]])
async def test_a_fork_server_that_fails_before_ready_is_not_retried(env: Env, preload: list[str]) -> None:
    spawner = Spawner(settings_for(env.home, "warm"), preload=preload)
    await asyncio.wait_for(spawner.start(), 60)
    assert spawner.mode == "cold"
    assert spawner.warm_failure is not None and spawner.warm_failure.startswith("warm start unavailable")
    spec, handle = None, None
    for _ in range(2):  # jobs still run (cold), and no new server is tried for them
        spec = diagnostic_spec(env.home, env.sink.endpoint, {})
        handle = await spawner.spawn(spec, LIMITS)
        assert (await finish(handle)).code == 0
    assert spawner.servers_started == 1
    await spawner.stop()


@pytest.mark.timeout(120)
@needs_cgroups
async def test_start_sweeps_stale_cgroups_of_this_instance_only(env: Env) -> None:
    mine = Cgroups(instance_key(env.home))
    other_home = short_dir()
    try:
        theirs = Cgroups(instance_key(other_home))
        stale = mine.create("stale", JobLimits(0, 0, 0))
        foreign = theirs.create("stale", JobLimits(0, 0, 0))
        spec, busy = await spawn(env, "cold", {"sleep": 120})  # a live job's cgroups stay
        await env.sink.until(spec.task_id, lambda e: e.get("message", "").startswith("sleeping"))
        restarted = Spawner(settings_for(env.home, "cold"))
        await restarted.start()
        assert not any(Path(d).exists() for d in stale.dirs.values())
        assert all(Path(d).exists() for d in foreign.dirs.values())
        assert all(Path(d).exists() for d in busy.cgroup.values())
        assert spec.task_id in restarted.leftovers()
        busy.kill()
        await finish(busy)
        assert foreign.remove()
    finally:
        remove_dir(other_home)


@pytest.mark.timeout(120)
async def test_a_standby_runner_takes_one_job_and_is_replaced(env: Env) -> None:
    warm = env.spawners["warm"]
    standby = await warm.wait_standby()
    assert standby is not None and psutil.pid_exists(standby)
    spec, handle = await spawn(env, "warm", {"report": True})
    assert handle.pid == standby  # the pre-forked process ran this job...
    report = (await env.sink.until(spec.task_id, lambda e: "process" in e))["process"]
    assert report["pid"] == standby and report["title"] == f"rfuav-runner diagnostic {spec.task_id}"
    assert (await finish(handle)).code == 0
    nxt = await warm.wait_standby()
    assert nxt not in (None, standby)  # ...and only this one: the next job gets a new process
    _, handle2 = await spawn(env, "warm", {})
    assert handle2.pid == nxt
    assert (await finish(handle2)).code == 0


@pytest.mark.timeout(120)
async def test_a_stopped_spawner_leaves_no_standby_runner_behind(env: Env) -> None:
    """``stop`` lets the standby go and waits for it: a daemon that stops leaves no process of
    its own (``rfuavd all`` is checked for exactly that)."""
    spawner = Spawner(settings_for(env.home, "warm"))
    await asyncio.wait_for(spawner.start(), 200)
    standby = await spawner.wait_standby()
    assert standby is not None and psutil.pid_exists(standby)
    await spawner.stop()
    try:
        assert psutil.Process(standby).status() == psutil.STATUS_ZOMBIE  # exited, not reaped yet
    except psutil.NoSuchProcess:
        pass
