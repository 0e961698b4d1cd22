"""The ``ps`` view of runners: each one's process tree from psutil, its cgroups and their limits
read back from the kernel, and GPU memory per process from NVML (see ``protocol.commands``)."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import psutil  # type: ignore[import-untyped]

from protocol.tasks import iso
from supervisor.gpu import Gpus

log = logging.getLogger(__name__)


class _Handle(Protocol):
    @property
    def pid(self) -> int: ...

    @property
    def cgroup(self) -> dict[str, str]: ...

    def alive_pids(self) -> list[int]: ...

    def cgroup_state(self) -> dict[str, Any]: ...


class _Task(Protocol):
    @property
    def task_id(self) -> str: ...

    @property
    def task_type(self) -> str: ...

    @property
    def device(self) -> str | None: ...

    @property
    def started_at(self) -> float | None: ...


class Ps:
    """Describes runners for ``ps``. One per daemon: it remembers each process it looked at,
    so that ``cpu_percent`` covers the time since the previous ``ps``."""

    def __init__(self, gpus: Gpus) -> None:
        self._gpus = gpus
        #: psutil objects kept between calls (keyed by pid and create time: a recycled pid is
        #: another process).
        self._seen: dict[tuple[int, float], psutil.Process] = {}

    def gpu_memory(self) -> dict[int, int] | None:
        """GPU memory per pid from NVML; None on a host without a GPU (unknown, not 0)."""
        return self._gpus.pids_memory() if self._gpus.available else None

    def views(self, running: Iterable[tuple[_Task, _Handle]]) -> list[dict[str, Any]]:
        """The ``ps`` entry of each running task (NVML asked once for all of them)."""
        gpu_memory = self.gpu_memory()
        return [self.runner_view(handle, task, gpu_memory) for task, handle in running]

    def _cpu_percent(self, proc: psutil.Process) -> float:
        """CPU use since the previous ``ps`` of this process, or over its lifetime the first time."""
        key = (proc.pid, proc.create_time())
        seen = self._seen.get(key)
        if seen is not None:
            return float(seen.cpu_percent(interval=None))
        self._seen[key] = proc
        proc.cpu_percent(interval=None)  # primes the next call
        times = proc.cpu_times()
        age: float = max(time.time() - key[1], 1e-3)
        busy: float = times.user + times.system
        return round(100.0 * busy / age, 1)

    def process_entry(self, proc: psutil.Process, gpu_memory: Mapping[int, int] | None) -> dict[str, Any]:
        """One process of a runner's tree. Raises ``psutil.Error`` when it vanished meanwhile."""
        with proc.oneshot():
            cmdline = proc.cmdline()
            # setproctitle pads the argument area; the padding is no part of the title.
            title = " ".join(a for a in cmdline if a).strip() or proc.name()
            try:
                open_files: int | None = len(proc.open_files())
            except psutil.AccessDenied:
                open_files = None
            return {
                "pid": proc.pid,
                "ppid": proc.ppid(),
                "title": title,
                "status": proc.status(),
                "cpu_percent": self._cpu_percent(proc),
                "rss": proc.memory_info().rss,
                "threads": proc.num_threads(),
                "open_files": open_files,
                "children": sorted(c.pid for c in proc.children()),
                "gpu_memory": None if gpu_memory is None else gpu_memory.get(proc.pid, 0),
            }

    def runner_view(self, handle: _Handle, task: _Task, gpu_memory: Mapping[int, int] | None) -> dict[str, Any]:
        """The ``ps`` entry of one running task. ``gpu_memory``: ``{pid: bytes}``, or None
        when unknown (no GPU)."""
        processes = []
        node = getattr(handle, "node", None)  # a Ray runner host's node
        local = node is None or node == socket.gethostname()
        for pid in handle.alive_pids() if local else []:
            try:
                processes.append(self.process_entry(psutil.Process(pid), gpu_memory))
            except psutil.Error:
                continue  # exited between the listing and the look
        processes.sort(key=lambda p: (p["pid"] != handle.pid, p["pid"]))  # the runner first
        for key, proc in list(self._seen.items()):
            if not proc.is_running():  # forget processes that are gone (any runner's)
                del self._seen[key]
        started = task.started_at
        return {
            **({"node": node} if node is not None else {}),
            "task_id": task.task_id,
            "task_type": task.task_type,
            "device": task.device,
            "pid": handle.pid,
            "started_at": iso(started),
            "age": round(time.time() - started, 1) if started else None,
            "cgroup": dict(handle.cgroup),
            "limits": handle.cgroup_state(),
            "processes": processes,
        }
