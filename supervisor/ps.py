"""The ``ps`` view of a runner: its process tree from psutil, its cgroups and their limits read
back from the kernel, and GPU memory per process from NVML (see ``protocol.commands``)."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Mapping
from typing import Any, Protocol

import psutil  # type: ignore[import-untyped]

from protocol.tasks import iso
from supervisor.gpu import Gpus

log = logging.getLogger(__name__)

#: psutil objects kept between calls, so ``cpu_percent`` covers the time since the last ``ps``
#: (keyed by pid and create time: a recycled pid is another process).
_SEEN: dict[tuple[int, float], psutil.Process] = {}


class _Handle(Protocol):
    pid: int
    cgroup: dict[str, str]

    def alive_pids(self) -> list[int]: ...

    def cgroup_state(self) -> dict[str, Any]: ...


class _Task(Protocol):
    task_id: str
    task_type: str
    device: str | None
    started_at: float | None


@functools.lru_cache(maxsize=1)
def _gpus() -> Gpus:
    return Gpus()


def _cpu_percent(proc: psutil.Process) -> float:
    """CPU use since the previous ``ps`` of this process, or over its lifetime the first time."""
    key = (proc.pid, proc.create_time())
    seen = _SEEN.get(key)
    if seen is not None:
        return float(seen.cpu_percent(interval=None))
    _SEEN[key] = proc
    proc.cpu_percent(interval=None)  # primes the next call
    times = proc.cpu_times()
    age: float = max(time.time() - key[1], 1e-3)
    busy: float = times.user + times.system
    return round(100.0 * busy / age, 1)


def process_entry(proc: psutil.Process, gpu_memory: Mapping[int, int] | None) -> dict[str, Any]:
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
            "cpu_percent": _cpu_percent(proc),
            "rss": proc.memory_info().rss,
            "threads": proc.num_threads(),
            "open_files": open_files,
            "children": sorted(c.pid for c in proc.children()),
            "gpu_memory": None if gpu_memory is None else gpu_memory.get(proc.pid, 0),
        }


def runner_view(handle: _Handle, task: _Task, gpu_memory: Mapping[int, int] | None = None) -> dict[str, Any]:
    """The ``ps`` entry of one running task. ``gpu_memory``: ``{pid: bytes}`` (default: asked
    of NVML; None per process when the host has no GPU)."""
    if gpu_memory is None:
        gpus = _gpus()
        gpu_memory = gpus.pids_memory() if gpus.available else None
    processes = []
    for pid in handle.alive_pids():
        try:
            processes.append(process_entry(psutil.Process(pid), gpu_memory))
        except psutil.Error:
            continue  # exited between the listing and the look
    processes.sort(key=lambda p: (p["pid"] != handle.pid, p["pid"]))  # the runner first
    for key, proc in list(_SEEN.items()):
        if not proc.is_running():  # forget processes that are gone (any runner's)
            del _SEEN[key]
    started = task.started_at
    return {
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
