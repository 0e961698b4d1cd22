"""A runner process on this host, as the supervisor holds it: its exit, its signals, its cgroups.

Exit status arrives on the event loop through a file descriptor, never a polling loop: the fork
server's status pipe for a warm runner (``forked``), a pidfd (``os.pidfd_open``) for a cold one
(``spawned``, our own child: its status is read) and an adopted one (``adopted``: another
supervisor's child, whose status nobody can read any more). Construct a handle through one of
those three, on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any

import psutil  # type: ignore[import-untyped]

from supervisor.executor import ExitInfo
from supervisor.forkserver import ServerLost, WarmPopen
from supervisor.job_cgroup import JobCgroup

log = logging.getLogger(__name__)


def create_time(pid: int) -> float:
    """``pid``'s start time as psutil tells it (now, when it is already gone)."""
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return time.time()


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
        """A handle that watches nothing yet: use ``forked``, ``spawned`` or ``adopted``."""
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

    # -- constructors ------------------------------------------------------------------
    @classmethod
    def forked(cls, popen: WarmPopen, cgroup: JobCgroup, memory_limit_mb: int, *, task_id: str) -> RunnerHandle:
        """A runner forked by the fork server; its exit status comes from the server's
        status pipe (the popen's sentinel), or from its pidfd once the server is gone."""
        handle = cls(popen.pid, create_time(popen.pid), cgroup, cgroup.warning, memory_limit_mb)

        def on_status() -> None:
            handle._unwatch(popen.sentinel)
            try:
                code = popen.read_exit()
            except ServerLost:
                # The fork server died: it can no longer tell us the status; the job may
                # still be running, so wait on the process itself.
                popen.close_sentinel()
                log.warning("task %s: fork server lost; waiting on pid %d directly", task_id, popen.pid)
                handle._watch_pidfd()
                return
            popen.close_sentinel()
            handle._resolve(code)

        handle._watch(popen.sentinel, on_status)
        return handle

    @classmethod
    def spawned(cls, proc: subprocess.Popen[bytes], cgroup: JobCgroup, memory_limit_mb: int) -> RunnerHandle:
        """A runner started as our own child process (cold start)."""
        handle = cls(proc.pid, create_time(proc.pid), cgroup, cgroup.warning, memory_limit_mb)
        handle._watch_pidfd(reap=proc.wait)
        return handle

    @classmethod
    def adopted(
        cls, proc: psutil.Process, create_time: float, cgroup: JobCgroup | None, memory_limit_mb: int
    ) -> RunnerHandle | None:
        """A runner another supervisor started; None when it is gone by now. ``wait``
        resolves on its exit with ``code=None`` (only its parent could read the status)."""
        handle = cls(proc.pid, create_time, cgroup, None, memory_limit_mb)
        if handle._pidfd is None:
            return None
        if not proc.is_running():  # psutil re-checks the create time
            handle._resolve(None)
            return None
        handle._watch_pidfd()
        return handle

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

    def _watch(self, fd: int, callback: Callable[[], None]) -> None:
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

    def _watch_pidfd(self, reap: Callable[[], int] | None = None) -> None:
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

    # -- what is left of it ------------------------------------------------------------
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
        a later supervisor can adopt it. ``wait`` then never resolves."""
        for fd in list(self._watched):
            self._unwatch(fd)

    def cleanup(self) -> None:
        """Remove the job's cgroups (any stray process left in them is killed first: it is
        the job's). Idempotent."""
        if self._cg is not None:
            self._cg.remove()
