"""What runs where and when: a priority queue over per-device, per-type concurrency limits.

Pure logic (no sockets, no processes, no clock): the lifecycle pushes tasks, asks ``place()`` for
the tasks that may start now, and ``release``\\ s a slot when a runner is gone. Tests drive it
directly.

- Order: higher ``priority`` first, then submission order (FIFO).
- Waiting: each queued task keeps the time it was queued at (``push(..., queued_at=)``, on the
  caller's clock); ``oldest()`` is the one queued first, so one timer on its deadline serves a
  queue wait limit (``supervisor.lifecycle``).
- A task that cannot start (its device is full for its type) does not block tasks of other
  devices or types behind it; a task of the same device and type never overtakes it, since the
  same limit holds them both.
- Limits: ``limits["cpu"]`` for the CPU, ``limits["gpu"]`` for every GPU, ``limits["cuda:N"]``
  overrides for one GPU. A slot is reserved the moment a task is placed, so the number running
  on a device never exceeds its limit, also right after ``set_limits`` lowers one (running tasks
  go on; no new one starts until the count is under the new limit).
- Devices: ``cpu`` → the CPU; ``cuda:N`` → that GPU (``check_device`` refuses one the host does
  not have, at submission); ``cuda`` → the least-loaded GPU with room (fewest tasks, then most
  free memory), or the CPU with a warning on a host without GPUs.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Callable
from dataclasses import dataclass, field

from protocol.tasks import DEVICE_RE, TASK_TYPES


@dataclass(frozen=True, slots=True)
class Placement:
    """A task to start now, on ``device``; ``warning`` when it fell back."""

    task_id: str
    task_type: str
    device: str
    warning: str | None = None


@dataclass(order=True, slots=True)
class _Entry:
    key: tuple[int, int]
    task_id: str = field(compare=False)
    task_type: str = field(compare=False)
    device: str = field(compare=False)
    queued_at: float = field(compare=False, default=0.0)


class Scheduler:
    """The queue, the limits and the slots in use. Not thread-safe (the event loop owns it)."""

    def __init__(
        self,
        limits: dict[str, dict[str, int]],
        gpu_count: int = 0,
        free_memory: Callable[[int], int] | None = None,
    ) -> None:
        self.gpu_count = gpu_count
        self._free_memory = free_memory
        self._limits: dict[str, dict[str, int]] = {k: dict(v) for k, v in limits.items()}
        self._limits.setdefault("cpu", {})
        self._limits.setdefault("gpu", {})
        #: The queue, one sorted list per (requested device, type): ``place`` looks at the
        #: heads only, so a long queue behind a full device costs nothing per submit.
        self._groups: dict[tuple[str, str], list[_Entry]] = {}
        self._queued: dict[str, _Entry] = {}
        self._counter = 0
        #: task_id -> (device, task_type) of every placed task.
        self._running: dict[str, tuple[str, str]] = {}

    # -- devices -------------------------------------------------------------------------
    @property
    def devices(self) -> list[str]:
        return ["cpu", *(f"cuda:{i}" for i in range(self.gpu_count))]

    def check_device(self, device: str) -> str | None:
        """Why ``device`` cannot be requested on this host, or None when it can."""
        if not DEVICE_RE.fullmatch(device):
            return f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}"
        if device.startswith("cuda:"):
            index = int(device[5:])
            if index >= self.gpu_count:
                have = f"GPUs cuda:0..cuda:{self.gpu_count - 1}" if self.gpu_count else "no GPU"
                return f"device {device!r} does not exist on this host ({have})"
        return None

    # -- limits --------------------------------------------------------------------------
    def limit(self, device: str, task_type: str) -> int:
        if device == "cpu":
            return self._limits["cpu"].get(task_type, 1)
        override = self._limits.get(device, {})
        if task_type in override:
            return override[task_type]
        return self._limits["gpu"].get(task_type, 1)

    def limits(self) -> dict[str, dict[str, int]]:
        """The limit of every type on every device of this host (``cpu``, ``cuda:N``)."""
        return {dev: {t: self.limit(dev, t) for t in TASK_TYPES} for dev in self.devices}

    def raw_limits(self) -> dict[str, dict[str, int]]:
        """The configured table (``cpu``, ``gpu`` and any ``cuda:N`` overrides)."""
        return {k: dict(v) for k, v in self._limits.items()}

    def validate_limits(self, changes: object) -> str | None:
        """Why ``changes`` is not a valid ``{device: {task_type: n}}``, or None."""
        if not isinstance(changes, dict):
            return "limits must be an object {device: {task_type: n}}"
        for dev, table in changes.items():
            if dev not in ("cpu", "gpu") and not (isinstance(dev, str) and dev.startswith("cuda:")):
                return f"unknown device {dev!r} (expected 'cpu', 'gpu' or 'cuda:N')"
            if dev.startswith("cuda:"):
                why = self.check_device(dev)
                if why is not None:
                    return why
            if not isinstance(table, dict):
                return f"limits[{dev!r}] must be an object {{task_type: n}}"
            for task_type, n in table.items():
                if task_type not in TASK_TYPES:
                    return (
                        f"unknown task type {task_type!r} in limits[{dev!r}] (expected one of {', '.join(TASK_TYPES)})"
                    )
                if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                    return f"limits[{dev!r}][{task_type!r}] must be an integer >= 0, got {n!r}"
        return None

    def set_limits(self, changes: dict[str, dict[str, int]]) -> None:
        """Change only the named entries (validate first with ``validate_limits``)."""
        for dev, table in changes.items():
            self._limits.setdefault(dev, {}).update(table)

    # -- queue ---------------------------------------------------------------------------
    def push(self, task_id: str, task_type: str, device: str, priority: int, queued_at: float = 0.0) -> None:
        """Queue a task (``device`` as requested: ``cpu``, ``cuda`` or ``cuda:N``) at ``queued_at``
        (non-decreasing from one push to the next)."""
        self._counter += 1
        entry = _Entry((-priority, self._counter), task_id, task_type, device, queued_at)
        bisect.insort(self._groups.setdefault((device, task_type), []), entry)
        self._queued[task_id] = entry

    def remove(self, task_id: str) -> bool:
        """Take a queued task out (a cancel); False when it is not queued."""
        entry = self._queued.pop(task_id, None)
        if entry is None:
            return False
        key = (entry.device, entry.task_type)
        group = self._groups[key]
        group.remove(entry)
        if not group:
            del self._groups[key]
        return True

    def oldest(self) -> tuple[str, float] | None:
        """``(task_id, queued_at)`` of the task queued first (None: the queue is empty)."""
        # ``_queued`` keeps push order: its first entry is the oldest.
        entry = next(iter(self._queued.values()), None)
        return None if entry is None else (entry.task_id, entry.queued_at)

    def queued(self) -> list[str]:
        """Queued task ids in the order they would start."""
        return [e.task_id for e in heapq.merge(*self._groups.values())]

    def _count(self, device: str, task_type: str) -> int:
        return sum(1 for d, t in self._running.values() if d == device and t == task_type)

    def _pick_gpu(self, task_type: str) -> str | None:
        best: tuple[int, int, int] | None = None
        for i in range(self.gpu_count):
            dev = f"cuda:{i}"
            if self._count(dev, task_type) >= self.limit(dev, task_type):
                continue
            load = sum(1 for d, _ in self._running.values() if d == dev)
            free = self._free_memory(i) if self._free_memory is not None else 0
            key = (load, -free, i)
            if best is None or key < best:
                best = key
        return None if best is None else f"cuda:{best[2]}"

    def place(self, admit: Callable[[str], bool] | None = None) -> list[Placement]:
        """Reserve slots for every queued task that may start now and return them in order.
        ``admit(device)``: whether the executor has room beyond our slots (a cluster's free
        resources); a task it refuses waits, and so do the ones of its device and type behind it."""
        placed: list[Placement] = []
        # The heads of the (requested device, type) groups in queue order: a group whose head
        # cannot start is dropped from this pass (the tasks behind it share its limit), so a
        # pass costs the groups and the tasks placed, never the length of the queue.
        heads = [(group[0].key, key) for key, group in self._groups.items()]
        heapq.heapify(heads)
        while heads:
            _, key = heapq.heappop(heads)
            group = self._groups[key]
            entry = group[0]
            warning = None
            if entry.device == "cuda":
                if self.gpu_count == 0:
                    device = "cpu"
                    warning = "device 'cuda' requested but this host has no GPU: running on the CPU"
                else:
                    picked = self._pick_gpu(entry.task_type)
                    if picked is None:
                        continue
                    device = picked
            else:
                device = entry.device
            if self._count(device, entry.task_type) >= self.limit(device, entry.task_type):
                continue
            if admit is not None and not admit(device):
                continue
            del group[0]
            if group:
                heapq.heappush(heads, (group[0].key, key))
            else:
                del self._groups[key]
            del self._queued[entry.task_id]
            self._running[entry.task_id] = (device, entry.task_type)
            placed.append(Placement(entry.task_id, entry.task_type, device, warning))
        return placed

    def room(self, task_type: str, requested: str, n: int) -> tuple[str | None, str | None]:
        """Where ``n`` slots of ``task_type`` fit now: ``(device, warning)``, or ``(None, why)``.
        ``requested`` as for ``push``; nothing is reserved (``occupy`` each slot)."""
        warning = None
        if requested == "cuda" and self.gpu_count == 0:
            device = "cpu"
            warning = "device 'cuda' requested but this host has no GPU: running on the CPU"
        elif requested == "cuda":
            best = [d for d in self.devices[1:] if self.limit(d, task_type) - self._count(d, task_type) >= n]
            if not best:
                return None, f"no GPU has room for {n} more {task_type} slot(s)"
            device = (self._pick_gpu(task_type) if n == 1 else None) or best[0]
        else:
            device = requested
        free = self.limit(device, task_type) - self._count(device, task_type)
        if free < n:
            return None, (
                f"no room on {device}: {n} {task_type} slot(s) needed, {max(free, 0)} free "
                f"(limit {self.limit(device, task_type)}; see /api/v2/limits)"
            )
        return device, warning

    def occupy(self, task_id: str, task_type: str, device: str) -> None:
        """Hold a slot for a task already running (adopted after a restart), limit or not."""
        self._running[task_id] = (device, task_type)

    def release(self, task_id: str) -> bool:
        """Free a task's slot; False when it held none (idempotent)."""
        return self._running.pop(task_id, None) is not None

    # -- views ---------------------------------------------------------------------------
    @property
    def running_count(self) -> int:
        return len(self._running)

    @property
    def queue_length(self) -> int:
        return len(self._queued)

    def usage(self) -> dict[str, dict[str, int]]:
        """``{device: {task_type: n running}}`` for every device of this host."""
        out = {dev: {t: 0 for t in TASK_TYPES} for dev in self.devices}
        for dev, task_type in self._running.values():
            out.setdefault(dev, {t: 0 for t in TASK_TYPES})[task_type] += 1
        return out

    def active(self) -> dict[str, list[dict[str, str]]]:
        """``{device: [{"id", "type"}]}`` of the running tasks."""
        out: dict[str, list[dict[str, str]]] = {dev: [] for dev in self.devices}
        for task_id, (dev, task_type) in self._running.items():
            out.setdefault(dev, []).append({"id": task_id, "type": task_type})
        return out
