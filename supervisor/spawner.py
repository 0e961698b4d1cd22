"""Starting runners on this host: one fresh process per job, in its own session and cgroup(s).

Two start modes (``settings.start_mode``):

- **warm**: the preloaded fork server (``supervisor.forkserver``) forks each job. The fork
  itself (10–20 ms for a 1 GB process) is taken off the start path by a *standby*: one runner
  forked ahead of demand that waits for its spec on a pipe and is replaced shortly after it is
  used. A job starts in milliseconds and shares the preloaded pages copy-on-write; each job is
  still a process of its own, never reused.
- **cold**: ``python -m runner <task_dir>/spec.json`` in a new session (about 3 s and 680 MB
  of imports per job); the fallback when the fork server cannot be brought to ready.

This module is the policy (when to start, replace or give up on a fork server, when to fork a
standby, which recorded runner to adopt); ``supervisor.handle.RunnerHandle`` is the process it
returns.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import subprocess
import sys
from pathlib import Path

import psutil  # type: ignore[import-untyped]

from protocol.jobs import JobSpec
from protocol.settings import Settings
from supervisor.cgroups import Cgroups, JobCgroup, JobLimits, instance_key
from supervisor.executor import ExitInfo
from supervisor.forkserver import PRELOAD, ForkServer, ServerLost, Standby
from supervisor.forkserver import WARM_TARGET as WARM_TARGET
from supervisor.handle import RunnerHandle
from supervisor.notify import NOTIFY_ENV_KEYS

__all__ = ["PRELOAD", "ExitInfo", "JobLimits", "RunnerHandle", "Spawner"]

log = logging.getLogger(__name__)

#: Seconds after a standby was used before the next one is forked.
REFILL_DELAY = 0.25
#: Longest a fork server may take to import its preload and answer the probe.
READY_TIMEOUT = 180.0
#: How long ``stop`` waits for the standby runner to exit once let go (EOF on its pipe).
STANDBY_EXIT_SECONDS = 5.0


class Spawner:
    """Starts runners (warm or cold) in their own cgroups and adopts survivors after a restart."""

    def __init__(self, settings: Settings, *, preload: list[str] | None = None) -> None:
        """``preload``: the fork server's preload modules (default ``PRELOAD``)."""
        self.settings = settings
        self.preload = list(PRELOAD if preload is None else preload)
        #: Fork servers started so far (a failure before ready is never retried).
        self.servers_started = 0
        self.cgroups = Cgroups(instance_key(settings.home))
        self.cgroups.jobs_cpu_weight = settings.job_cpu_weight
        self._wanted_mode = settings.start_mode
        self._server: ForkServer | None = None
        self._starting: asyncio.Task[None] | None = None
        #: Task ids spawned by this object (``sweep`` leaves their cgroups alone).
        self._spawned: set[str] = set()
        #: One runner forked ahead of demand, waiting for its spec (warm mode).
        self._standby: Standby | None = None
        self._refilling: asyncio.Task[None] | None = None
        #: Keep a standby (pre-forked runner): the fork leaves the job's start path.
        self.standby_enabled = True
        #: Why warm start is unavailable (the fork server failed before ready); never retried.
        self.warm_failure: str | None = None
        self._stopping = False

    @property
    def mode(self) -> str:
        """``warm`` or ``cold``: the mode jobs actually start in."""
        return "warm" if self._wanted_mode == "warm" and self.warm_failure is None else "cold"

    # -- fork server -------------------------------------------------------------------
    async def start(self) -> None:
        """Prepare cgroups; in warm mode start the fork server and wait until it is ready.
        A server that fails before ready is not retried: jobs start cold (logged)."""
        self.cgroups.prepare()
        if self.cgroups.unavailable:
            log.error(
                "JOB LIMITS ARE NOT ENFORCED on this host (%s): every job runs without memory, CPU "
                "and pids limits, and says so in its log",
                self.cgroups.unavailable,
            )
        elif self.cgroups.missing:
            log.error(
                "job limits of %s are NOT ENFORCED on this host: it offers no such cgroup controller "
                "(every job says so in its log)",
                ", ".join(sorted(self.cgroups.missing)),
            )
        self.sweep()
        if self._wanted_mode == "warm":
            await self._start_server()

    @property
    def server_pid(self) -> int | None:
        """The fork server's pid (None in cold mode or while it is being replaced)."""
        return self._server.pid if self._server is not None else None

    async def _start_server(self) -> None:
        """Bring a fork server to ready unless one is (or warm start has failed for good)."""
        if (self._server is not None and not self._server.dead) or self.warm_failure is not None:
            return
        if self._starting is None or self._starting.done():
            self._starting = asyncio.ensure_future(self._bring_up())
        await asyncio.shield(self._starting)

    async def _bring_up(self) -> None:
        """Start a server and wait for its probe. A failure here marks warm start unavailable
        for good: a server that cannot get ready is never retried in a loop."""
        server = ForkServer(self.preload, self.settings.runtime_dir / "forkserver")
        self.servers_started += 1
        try:
            server.launch()
            await asyncio.wait_for(asyncio.to_thread(server.probe), READY_TIMEOUT)
        except (TimeoutError, RuntimeError, OSError) as exc:
            reason = str(exc) or f"not ready within {READY_TIMEOUT:.0f} s"
            self.warm_failure = f"warm start unavailable: {reason}"
            log.error("%s; starting jobs cold", self.warm_failure)
            server.stop()
            await asyncio.to_thread(server.reap, 5.0)
            return
        log.info("fork server %s ready in %.2f s (preload %s)", server.pid, server.ready_seconds, self.preload)
        self._server = server
        assert server.pidfd is not None
        asyncio.get_running_loop().add_reader(server.pidfd, self._server_died, server)
        self._refill()

    def _server_died(self, server: ForkServer) -> None:
        """The server exited. It was ready once, so replacing it is no startup loop; a
        replacement that fails before ready ends warm start (``_bring_up``)."""
        if server.dead:
            return  # handled already (both the pidfd and a failed spawn may report it)
        server.dead = True
        assert server.pidfd is not None
        asyncio.get_running_loop().remove_reader(server.pidfd)
        if self._server is server:
            self._server = None
        if self._standby is not None and self._standby.server is server:
            self._standby.discard()
            self._standby = None
        server.stop()
        server.reap(0.0)  # already exited: does not block
        if self._stopping:
            return
        log.error("fork server %s died; starting a replacement", server.pid)
        if self._starting is None or self._starting.done():
            self._starting = asyncio.ensure_future(self._bring_up())

    async def stop(self) -> None:
        """Stop the fork server (running jobs carry on; they are in their own sessions)."""
        self._stopping = True
        if self._starting is not None and not self._starting.done():
            await asyncio.shield(self._starting)
        if self._refilling is not None and not self._refilling.done():
            await asyncio.shield(self._refilling)
        if self._standby is not None:
            standby, self._standby = self._standby, None
            await asyncio.to_thread(standby.discard, STANDBY_EXIT_SECONDS)
        server, self._server = self._server, None
        if server is not None:
            assert server.pidfd is not None
            asyncio.get_running_loop().remove_reader(server.pidfd)
            server.stop()
            await asyncio.to_thread(server.reap, 5.0)

    # -- jobs --------------------------------------------------------------------------
    async def spawn(self, spec: JobSpec, limits: JobLimits) -> RunnerHandle:
        """Create the job's cgroups, write ``spec.json`` (0600) and start the runner; return
        once its pid is known. The runner joins the cgroups itself before any work."""
        self._spawned.add(spec.task_id)
        # mkdir and limit writes can block in the kernel (reclaim): off the loop.
        cg = await asyncio.to_thread(self.cgroups.create, spec.task_id, limits)
        spec = dataclasses.replace(spec, cgroup_procs=cg.procs_files)
        task_dir = Path(spec.task_dir)
        task_dir.mkdir(parents=True, exist_ok=True)
        spec_path = task_dir / "spec.json"
        fd = os.open(spec_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)  # an existing file keeps its mode otherwise
            os.write(fd, spec.dump())
        finally:
            os.close(fd)
        memory_mb = limits.memory_mb if cg.enforced or "memory" in cg.dirs else 0
        try:
            if self._wanted_mode == "warm" and self.warm_failure is None:
                return await self._spawn_warm(spec, cg, memory_mb)
            return self._spawn_cold(spec, cg, memory_mb)
        except BaseException:
            cg.remove()
            raise

    async def _spawn_warm(self, spec: JobSpec, cg: JobCgroup, memory_mb: int) -> RunnerHandle:
        if self._server is None:
            await self._start_server()
            if self._server is None:  # failed before ready: never retried
                return self._spawn_cold(spec, cg, memory_mb)
        standby = self._use_standby(spec)
        if standby is not None:
            return RunnerHandle.forked(standby.popen, cg, memory_mb, task_id=spec.task_id)
        server = self._server
        try:
            popen = await asyncio.to_thread(server.fork_job, spec)
        except ServerLost as exc:
            # It died since we last looked (its pidfd callback may not have run yet).
            log.warning("fork server lost before task %s (%s); waiting for a replacement", spec.task_id, exc)
            self._server_died(server)
            await self._start_server()
            if self._server is None:  # the replacement failed before ready
                return self._spawn_cold(spec, cg, memory_mb)
            popen = await asyncio.to_thread(self._server.fork_job, spec)
        return RunnerHandle.forked(popen, cg, memory_mb, task_id=spec.task_id)

    def _use_standby(self, spec: JobSpec) -> Standby | None:
        """Hand ``spec`` to the standby runner (and fork the next one in the background);
        None when there is no usable standby."""
        standby, self._standby = self._standby, None
        # Fork the next standby a little later: a fork now would compete for the CPU with
        # the start of the job just handed over (measured: +20 ms on 2 busy cores).
        asyncio.get_running_loop().call_later(REFILL_DELAY, self._refill)
        if standby is None:
            return None
        if standby.server is not self._server or not standby.send(spec):
            standby.discard()
            return None
        return standby

    async def wait_standby(self) -> int | None:
        """The standby runner's pid once one is ready (forking one now if none is on its
        way); None when there can be none (cold mode, no server, standby disabled)."""
        self._refill()
        if self._refilling is not None and not self._refilling.done():
            await asyncio.shield(self._refilling)
        return self._standby.popen.pid if self._standby is not None else None

    def _refill(self) -> None:
        """Fork a new standby in the background unless one exists or is on its way."""
        if not self.standby_enabled or self._stopping or self._server is None or self._standby is not None:
            return
        if self._refilling is not None and not self._refilling.done():
            return
        self._refilling = asyncio.ensure_future(self._fork_standby(self._server))

    async def _fork_standby(self, server: ForkServer) -> None:
        try:
            standby = await asyncio.to_thread(server.fork_standby)
        except ServerLost as exc:
            log.warning("no standby runner: %s", exc)
            return
        if self._stopping or self._server is not server or self._standby is not None:
            standby.discard()
            return
        self._standby = standby

    def _spawn_cold(self, spec: JobSpec, cg: JobCgroup, memory_mb: int) -> RunnerHandle:
        env = {k: v for k, v in os.environ.items() if k not in NOTIFY_ENV_KEYS}
        env["NO_ALBUMENTATIONS_UPDATE"] = "1"
        # Output before the runner redirects its own (an import error, say) lands here too.
        with open(Path(spec.task_dir) / "stderr.log", "ab") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "runner", str(Path(spec.task_dir) / "spec.json")],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                env=env,
                start_new_session=True,
                close_fds=True,
            )
        return RunnerHandle.spawned(proc, cg, memory_mb)

    def adopt(self, pid: int, create_time: float, cgroup: dict[str, str]) -> RunnerHandle | None:
        """A handle for a runner a previous supervisor started, if it still runs: the pid must
        exist with the same create time (else it is another process now). ``wait`` resolves on
        its exit with ``code=None`` (only its parent could read the status). Recorded cgroup
        dirs that are not this instance's job cgroups are ignored (never touched). Call it
        from the event loop (the handle watches a pidfd there)."""
        try:
            proc = psutil.Process(pid)
            if abs(proc.create_time() - create_time) > 0.01 or proc.status() == psutil.STATUS_ZOMBIE:
                return None
        except psutil.Error:
            return None
        cg = self.cgroups.attach(cgroup) if cgroup else None
        memory_mb = 0
        if cg is not None:
            limit = cg.read_back().get("memory_limit_bytes")
            memory_mb = int(limit) >> 20 if limit else 0
        return RunnerHandle.adopted(proc, create_time, cg, memory_mb)

    def sweep(self) -> list[str]:
        """Remove this instance's job cgroups that no process uses any more (left by a
        supervisor that died); those with live processes stay for ``adopt``. Returns the
        task ids removed."""
        removed = []
        for task_id, dirs in self.cgroups.leftovers().items():
            if task_id in self._spawned:  # ours, perhaps not joined by its runner yet
                continue
            cg = self.cgroups.attach(dirs)
            if cg is not None and not cg.pids() and cg.remove():
                removed.append(task_id)
        if removed:
            log.info("removed %d stale job cgroup(s): %s", len(removed), ", ".join(removed))
        return removed

    def leftovers(self) -> dict[str, dict[str, str]]:
        """This instance's job cgroups found on disk (task id -> dirs), e.g. after a crash."""
        return self.cgroups.leftovers()
