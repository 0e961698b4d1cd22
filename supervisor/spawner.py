"""Starting runners: one fresh process per job, in its own session and cgroup(s), and knowing
when it exits without polling.

Two start modes (``settings.start_mode``):

- **warm**: a ``multiprocessing`` fork server that imported ``runner.preload`` (torch,
  torchvision, albumentations, sklearn, cv2; no torch operation ever runs in it) forks each
  job, whose target is ``runner.entry.run_and_exit(spec)``. The fork itself (10–20 ms for a
  1 GB process) is taken off the start path by a *standby*: one runner forked ahead of
  demand that waits for its spec on a pipe (``runner.entry.run_when_sent``) and is replaced
  shortly after it is used. A job starts in milliseconds and shares the preloaded pages
  copy-on-write; each job is still a process of its own, never reused.
- **cold**: ``python -m runner <task_dir>/spec.json`` in a new session (about 3 s and 680 MB
  of imports per job); the fallback when the fork server cannot be brought to ready.

Exit status arrives on the event loop through a file descriptor, never a polling loop: the
fork server's status pipe (it writes the child's exit code, ``-signum`` when killed) for warm
jobs, a pidfd (``os.pidfd_open``) for cold and adopted ones.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import io
import logging
import multiprocessing.connection as mp_connection
import multiprocessing.context as mp_context
import os
import select
import signal
import subprocess
import sys
import time
from multiprocessing import forkserver, popen_forkserver, reduction
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]

from protocol.jobs import JobSpec
from protocol.settings import Settings
from supervisor.cgroups import Cgroups, JobCgroup, JobLimits, instance_key

__all__ = ["ExitInfo", "JobLimits", "RunnerHandle", "Spawner"]

log = logging.getLogger(__name__)

#: Modules the fork server imports once, before it forks anything.
PRELOAD: list[str] = ["runner.preload"]
#: The warm job's entry (module, function): runs the job and exits with its code.
WARM_TARGET = ("runner.entry", "run_and_exit")
#: A standby's entry: waits for its spec on a pipe, then runs it like ``WARM_TARGET``.
STANDBY_TARGET = ("runner.entry", "run_when_sent")
#: Run in a child forked from a fresh server: exits 0 only when the preload really happened
#: (``multiprocessing`` ignores an ImportError in a preload module, which would leave every
#: job silently paying the full import cost).
_PROBE = "import sys\nsys.exit(0 if {'torch', 'runner.entry'} <= set(sys.modules) else 3)\n"
#: Seconds after a standby was used before the next one is forked.
REFILL_DELAY = 0.25
#: Longest a fork server may take to import its preload and answer the probe.
READY_TIMEOUT = 180.0
#: Environment variables that belong to the daemon alone (systemd notify/watchdog).
DAEMON_ONLY_ENV: tuple[str, ...] = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


@dataclasses.dataclass(frozen=True)
class ExitInfo:
    """How a runner ended. ``code``: exit status, ``-signum`` when killed by a signal, None
    when unknown (an adopted runner, or one whose fork server died before reporting)."""

    code: int | None
    oom_killed: bool
    memory_limit_mb: int


class _ServerLost(Exception):
    """The fork server went away before it reported a child's exit status."""


class _WarmPopen(popen_forkserver.Popen):
    """``multiprocessing``'s fork-server launch against *our* server instance, sending only
    the process name as preparation data. The stock launch also sends the parent's main
    module, which every child would then re-import (pytest, the ``rfuavd`` script …): tens
    of milliseconds and megabytes per job for nothing."""

    def __init__(self, process_obj: Any, server: forkserver.ForkServer) -> None:
        self._server = server
        self.server_lost = False
        super().__init__(process_obj)

    def _launch(self, process_obj: Any) -> None:
        buf = io.BytesIO()
        # The process object carries an AuthenticationString, which pickles only while a
        # spawning Popen is registered.
        mp_context.set_spawning_popen(self)
        try:
            reduction.dump({"name": process_obj.name}, buf)
            reduction.dump(process_obj, buf)
        finally:
            mp_context.set_spawning_popen(None)
        self.sentinel, w = self._server.connect_to_new_process(self._fds)  # type: ignore[attr-defined]
        self.finalizer = None  # type: ignore[assignment]
        with open(w, "wb", closefd=True) as f:
            f.write(buf.getbuffer())
        self.pid = forkserver.read_signed(self.sentinel)

    def read_exit(self) -> int:
        """The exit status; call once the sentinel is readable. Raises ``_ServerLost``."""
        if self.returncode is None:
            try:
                self.returncode = forkserver.read_signed(self.sentinel)
            except (OSError, EOFError) as exc:
                self.server_lost = True
                raise _ServerLost(str(exc)) from None
        return int(self.returncode)

    def close_sentinel(self) -> None:
        try:
            os.close(self.sentinel)
        except OSError:
            pass


class _ForkServer:
    """One preloaded fork server and its readiness. Wraps ``multiprocessing.forkserver``;
    the few private attributes it reads (the server's pid, "alive" fd and address) are read
    here only. A pidfd on the server tells its death without polling or pid reuse."""

    def __init__(self, preload: list[str]) -> None:
        self._server = forkserver.ForkServer()
        self._server.set_forkserver_preload(preload)
        self.pid: int | None = None
        self.pidfd: int | None = None
        self.ready_seconds = 0.0
        self.dead = False

    def launch(self) -> None:
        """Start the server process (returns at once; the preload runs in the background).
        Runs on the loop thread: the daemon-only variables are held back from its environment."""
        saved = {k: os.environ.pop(k) for k in DAEMON_ONLY_ENV if k in os.environ}
        os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
        try:
            self._server.ensure_running()
        finally:
            os.environ.update(saved)
        self.pid = self._server._forkserver_pid  # type: ignore[attr-defined]
        assert self.pid is not None
        self.pidfd = os.pidfd_open(self.pid)

    def alive(self) -> bool:
        if self.pidfd is None:
            return False
        readable, _, _ = select.select([self.pidfd], [], [], 0)
        return not readable

    def probe(self) -> None:
        """Block until the server has preloaded and forked a probe child that exited 0.
        Raises ``RuntimeError`` (with the reason) otherwise. Call from a worker thread."""
        started = time.monotonic()
        process = mp_context.ForkServerProcess(target=exec, args=(_PROBE,), name="rfuav-probe")
        try:
            popen = _WarmPopen(process, self._server)
            code = popen.read_exit()
        except (_ServerLost, EOFError, OSError) as exc:
            raise RuntimeError(f"fork server died while preloading: {exc}") from None
        popen.close_sentinel()
        if code != 0:
            raise RuntimeError(f"fork server preload incomplete (probe exit {code}); see the daemon's stderr")
        self.ready_seconds = time.monotonic() - started

    def spawn(self, process_obj: Any) -> _WarmPopen:
        """Fork one job. Raises ``_ServerLost`` when the server is gone (multiprocessing
        would otherwise quietly start an unprobed replacement and block on its preload)."""
        if not self.alive():
            raise _ServerLost("fork server is not running")
        try:
            return _WarmPopen(process_obj, self._server)
        except (EOFError, ConnectionError) as exc:
            raise _ServerLost(str(exc)) from None

    def stop(self) -> None:
        """Stop the server: close our "alive" fd (it exits once no job holds it either), and
        SIGTERM it so that a supervisor's stop does not wait for running jobs."""
        server: Any = self._server  # its private attributes are not in typeshed
        if server._forkserver_alive_fd is not None:
            try:
                os.close(server._forkserver_alive_fd)
            except OSError:
                pass
            server._forkserver_alive_fd = None
        if self.pidfd is not None:
            try:
                signal.pidfd_send_signal(self.pidfd, signal.SIGTERM)
            except ProcessLookupError:
                pass
        address = server._forkserver_address
        if isinstance(address, str):
            try:
                os.unlink(address)
            except OSError:
                pass
            server._forkserver_address = None

    def reap(self, timeout: float) -> None:
        """Collect the server's exit status (it is our child); SIGKILL after ``timeout``.
        Blocks: call from a worker thread, or when the pidfd is already readable."""
        if self.pidfd is None:
            return
        readable, _, _ = select.select([self.pidfd], [], [], timeout)
        if not readable:
            log.warning("fork server %s did not stop in %.0f s; killing it", self.pid, timeout)
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        try:
            os.waitpid(self.pid or -1, 0)
        except ChildProcessError:
            pass  # multiprocessing reaped it already
        os.close(self.pidfd)
        self.pidfd = None


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (ProcessLookupError, OSError):
        return None


class RunnerHandle:
    """A started (or adopted) runner. See ``wait``, ``terminate``, ``kill``, ``cleanup``."""

    def __init__(
        self,
        pid: int,
        create_time: float,
        cgroup: JobCgroup | None,
        warning: str | None,
        memory_limit_mb: int,
    ) -> None:
        self.pid = pid
        self.create_time = create_time
        self._cg = cgroup
        self.cgroup: dict[str, str] = dict(cgroup.dirs) if cgroup else {}
        self.limits_enforced = bool(cgroup and cgroup.enforced)
        self.warning = warning
        self.memory_limit_mb = memory_limit_mb
        self._loop = asyncio.get_running_loop()
        self._exit: asyncio.Future[int | None] = self._loop.create_future()
        self._info: ExitInfo | None = None
        self._pidfd: int | None = _pidfd(pid)
        self._watched: list[int] = []

    # -- exit --------------------------------------------------------------------------
    @property
    def exited(self) -> bool:
        return self._exit.done()

    async def wait(self) -> ExitInfo:
        """Resolve once the runner has exited: its code and whether the cgroup saw an OOM kill."""
        code = await asyncio.shield(self._exit)
        if self._info is None:
            oom = bool(self._cg and self._cg.oom_killed())
            self._info = ExitInfo(code, oom, self.memory_limit_mb)
        return self._info

    def _watch(self, fd: int, callback: Any) -> None:
        self._loop.add_reader(fd, callback)
        self._watched.append(fd)

    def _unwatch(self, fd: int) -> None:
        if fd in self._watched:
            self._loop.remove_reader(fd)
            self._watched.remove(fd)

    def _resolve(self, code: int | None) -> None:
        for fd in list(self._watched):
            self._unwatch(fd)
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        if not self._exit.done():
            self._exit.set_result(code)

    def _watch_pidfd(self, reap: Any = None) -> None:
        """Resolve when the pidfd turns readable (the process ended). ``reap`` returns the
        code for our own child; otherwise the code is unknown."""
        fd = self._pidfd
        if fd is None:  # already gone before we could open it
            self._loop.call_soon(self._resolve, reap() if reap else None)
            return

        def on_exit() -> None:
            self._resolve(reap() if reap else None)

        self._watch(fd, on_exit)

    # -- signals -----------------------------------------------------------------------
    def _signal(self, sig: int) -> None:
        """``sig`` to the job's process group; to the runner itself (by pidfd: never a
        recycled pid) when the group does not exist yet (it calls setsid first thing). One
        signal only: a second SIGTERM could land after the runner restored the default
        action on its way out and turn a clean exit into -15."""
        try:
            os.killpg(self.pid, sig)
            return
        except (ProcessLookupError, PermissionError):
            pass
        if self._pidfd is not None and not self.exited:
            try:
                signal.pidfd_send_signal(self._pidfd, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        """SIGTERM to the job's process group (the runner stops at its next safe point)."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the process group, the runner, its descendants, and every process in the
        job's cgroup(s) — which also catches descendants that left the group with setsid."""
        descendants = self._descendants()
        self._signal(signal.SIGKILL)
        if self._pidfd is not None and not self.exited:
            try:  # also when the group exists: the runner may have left it
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self._cg is not None:
            self._cg.kill()
        for proc in descendants:
            try:
                proc.kill()  # psutil checks the create time: never a recycled pid
            except psutil.Error:
                pass

    def _descendants(self) -> list[psutil.Process]:
        try:
            return list(psutil.Process(self.pid).children(recursive=True))
        except psutil.Error:
            return []

    def alive_pids(self) -> list[int]:
        """Every live (non-zombie) process of the job: its group, its cgroups, its descendants."""
        pids: set[int] = set()
        if self._cg is not None:
            pids |= self._cg.pids()
        for pid in psutil.pids():
            try:
                if os.getpgid(pid) == self.pid:
                    pids.add(pid)
            except (ProcessLookupError, PermissionError):
                continue
        if not self.exited:
            pids.add(self.pid)
        pids |= {p.pid for p in self._descendants()}
        alive = []
        for pid in sorted(pids):
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.Error:
                continue
        return alive

    def cgroup_state(self) -> dict[str, Any]:
        """The job's cgroup limits and usage as the kernel reports them now (for ``ps``)."""
        state: dict[str, Any] = {"enforced": self.limits_enforced}
        if self._cg is not None:
            state.update(self._cg.read_back())
        return state

    def detach(self) -> None:
        """Stop watching the runner (the supervisor is going away); it carries on running and
        a later supervisor can ``adopt`` it. ``wait`` then never resolves."""
        for fd in list(self._watched):
            self._unwatch(fd)

    def cleanup(self) -> None:
        """Remove the job's cgroups (any stray process left in them is killed first: it is
        the job's). Idempotent."""
        if self._cg is not None:
            self._cg.remove()


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
        self._server: _ForkServer | None = None
        self._starting: asyncio.Task[None] | None = None
        #: Task ids spawned by this object (``sweep`` leaves their cgroups alone).
        self._spawned: set[str] = set()
        #: One runner forked ahead of demand, waiting for its spec (warm mode).
        self._standby: _Standby | None = None
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
        server = _ForkServer(self.preload)
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

    def _server_died(self, server: _ForkServer) -> None:
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
            self._standby.discard()
            self._standby = None
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
            return self._spawn_cold(spec, spec_path, cg, memory_mb)
        except BaseException:
            cg.remove()
            raise

    async def _spawn_warm(self, spec: JobSpec, cg: JobCgroup, memory_mb: int) -> RunnerHandle:
        if self._server is None:
            await self._start_server()
            if self._server is None:  # failed before ready: never retried
                spec_path = Path(spec.task_dir) / "spec.json"
                return self._spawn_cold(spec, spec_path, cg, memory_mb)
        popen = self._use_standby(spec)
        if popen is not None:
            return self._warm_handle(spec, popen, cg, memory_mb)
        process = mp_context.ForkServerProcess(
            target=_Named(*WARM_TARGET),  # type: ignore[arg-type]
            args=(spec,),
            name=f"rfuav-runner-{spec.task_id}",
        )
        server = self._server
        try:
            popen = await asyncio.to_thread(server.spawn, process)
        except _ServerLost as exc:
            # It died since we last looked (its pidfd callback may not have run yet).
            log.warning("fork server lost before task %s (%s); waiting for a replacement", spec.task_id, exc)
            self._server_died(server)
            await self._start_server()
            if self._server is None:  # the replacement failed before ready
                return self._spawn_cold(spec, Path(spec.task_dir) / "spec.json", cg, memory_mb)
            popen = await asyncio.to_thread(self._server.spawn, process)
        return self._warm_handle(spec, popen, cg, memory_mb)

    def _use_standby(self, spec: JobSpec) -> _WarmPopen | None:
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
        return standby.popen

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

    async def _fork_standby(self, server: _ForkServer) -> None:
        reader, writer = mp_connection.Pipe(duplex=False)
        process = mp_context.ForkServerProcess(
            target=_Named(*STANDBY_TARGET),  # type: ignore[arg-type]
            args=(reader,),
            name="rfuav-standby",
        )
        try:
            popen = await asyncio.to_thread(server.spawn, process)
        except _ServerLost as exc:
            log.warning("no standby runner: %s", exc)
            writer.close()
            return
        finally:
            reader.close()  # the child has its own copy
        standby = _Standby(server, popen, writer)
        if self._stopping or self._server is not server or self._standby is not None:
            standby.discard()
            return
        self._standby = standby

    def _warm_handle(self, spec: JobSpec, popen: _WarmPopen, cg: JobCgroup, memory_mb: int) -> RunnerHandle:
        """A handle for a runner forked by the fork server; its exit status comes from the
        server's status pipe (the popen's sentinel)."""
        handle = RunnerHandle(popen.pid, _create_time(popen.pid), cg, cg.warning, memory_mb)

        def on_status() -> None:
            try:
                code = popen.read_exit()
            except _ServerLost:
                # The fork server died: it can no longer tell us the status; the job may
                # still be running, so wait on the process itself.
                handle._unwatch(popen.sentinel)
                popen.close_sentinel()
                log.warning("task %s: fork server lost; waiting on pid %d directly", spec.task_id, popen.pid)
                handle._watch_pidfd()
                return
            handle._unwatch(popen.sentinel)
            popen.close_sentinel()
            handle._resolve(code)

        handle._watch(popen.sentinel, on_status)
        return handle

    def _spawn_cold(self, spec: JobSpec, spec_path: Path, cg: JobCgroup, memory_mb: int) -> RunnerHandle:
        env = {k: v for k, v in os.environ.items() if k not in DAEMON_ONLY_ENV}
        env["NO_ALBUMENTATIONS_UPDATE"] = "1"
        # Output before the runner redirects its own (an import error, say) lands here too.
        with open(Path(spec.task_dir) / "stderr.log", "ab") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "runner", str(spec_path)],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                env=env,
                start_new_session=True,
                close_fds=True,
            )
        handle = RunnerHandle(proc.pid, _create_time(proc.pid), cg, cg.warning, memory_mb)
        handle._watch_pidfd(reap=proc.wait)
        return handle

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
        handle = RunnerHandle(pid, create_time, cg, None, memory_mb)
        if handle._pidfd is None:
            return None
        if not proc.is_running():  # psutil re-checks the create time
            handle._resolve(None)
            return None
        handle._watch_pidfd()
        return handle

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


class _Standby:
    """A runner forked ahead of demand, blocked reading its spec from ``conn``."""

    def __init__(self, server: _ForkServer, popen: _WarmPopen, conn: mp_connection.Connection) -> None:
        self.server = server
        self.popen = popen
        self.conn = conn

    def send(self, spec: JobSpec) -> bool:
        """Give it its job; False when it is gone (it then gets discarded)."""
        readable, _, _ = select.select([self.popen.sentinel], [], [], 0)
        if readable:  # exited (or its server did): the status pipe has news
            return False
        try:
            self.conn.send(spec)
        except OSError:
            return False
        finally:
            self.conn.close()
        return True

    def discard(self) -> None:
        """Let it go: EOF on its pipe makes it exit; its status pipe is closed unread."""
        self.conn.close()
        self.popen.close_sentinel()


class _Module:
    """Pickles as ``importlib.import_module(name)``."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (importlib.import_module, (self.name,))


class _Named:
    """A function named by module and attribute, resolved only where it is unpickled (the
    child): it pickles as ``getattr(import_module(module), name)``, so the supervisor never
    imports runner code and the child never imports supervisor code."""

    def __init__(self, module: str, name: str) -> None:
        self.module = module
        self.name = name

    def __reduce__(self) -> tuple[Any, tuple[_Module, str]]:
        return (getattr, (_Module(self.module), self.name))


def _create_time(pid: int) -> float:
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return time.time()
