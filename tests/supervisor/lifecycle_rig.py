"""In-process rig for ``supervisor.lifecycle``: a real Store (SQLite in a temp dir), a real
Pipeline and Scheduler, and a fake executor whose handles a test resolves by hand (no
processes, no sockets). Every stored event, every scheduling pass and every signal sent to a
fake job wake ``Rig.until``, so tests wait on conditions under a deadline, never on sleeps.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import orjson

from protocol.jobs import JobSpec
from protocol.settings import Settings
from protocol.tasks import PENDING, TaskRecord, now_iso
from supervisor.executor import ExitInfo, StartAborted
from supervisor.job_cgroup import JobLimits
from supervisor.lifecycle import Lifecycle
from supervisor.pipeline import Pipeline
from supervisor.scheduler import Scheduler
from supervisor.store import Store

#: Longest a test waits for a condition.
WAIT = 10.0


class FakeHandle:
    """A job's process as the lifecycle sees it; the test decides how and when it ends.
    ``notify`` is called (on the loop) after each signal sent to it."""

    def __init__(self, pid: int, notify: Callable[[], None] = lambda: None, leftovers: Collection[int] = ()) -> None:
        self.pid = pid
        self.create_time = 1_000.0 + pid
        self.cgroup = {"memory": f"/sys/fs/cgroup/memory/rfuav-test-{pid}"}
        self.limits_enforced = True
        self.warning: str | None = None
        self.signals: list[str] = []
        self.cleaned = False
        self.left = list(leftovers)
        self._loop = asyncio.get_running_loop()
        self._exit: asyncio.Future[ExitInfo] = self._loop.create_future()
        self._notify = notify

    # -- the test's side -------------------------------------------------------------------
    def exit(self, code: int | None, *, oom: bool = False, memory_limit_mb: int = 0) -> None:
        self._exit.set_result(ExitInfo(code, oom, memory_limit_mb))

    def lose(self, exc: Exception) -> None:
        self._exit.set_exception(exc)

    # -- JobHandle -------------------------------------------------------------------------
    async def wait(self) -> ExitInfo:
        return await asyncio.shield(self._exit)

    def terminate(self) -> None:
        self.signals.append("TERM")
        self._loop.call_soon_threadsafe(self._notify)

    def kill(self) -> None:  # also called from the lifecycle's worker thread
        self.signals.append("KILL")
        self.left = []
        self._loop.call_soon_threadsafe(self._notify)

    def alive_pids(self) -> list[int]:
        return list(self.left)

    def cgroup_state(self) -> dict[str, Any]:
        return {"enforced": True}

    def cleanup(self) -> None:
        self.cleaned = True


class FakeExecutor:
    """Starts ``FakeHandle``\\ s; ``gate`` holds starts back, ``fail_next`` fails one. With
    ``abort_ends_start``, ``abort`` ends a start held by ``gate`` (``StartAborted``), as a
    runner host still waiting for Ray to place it; otherwise it is a no-op, as locally."""

    mode = "fake"

    def __init__(self, notify: Callable[[], None]) -> None:
        self._notify = notify
        self.specs: dict[str, JobSpec] = {}
        self.handles: dict[str, FakeHandle] = {}
        self.order: list[str] = []
        self.gate: asyncio.Event | None = None
        self.fail_next: Exception | None = None
        self.adoptable: dict[int, FakeHandle] = {}
        self.kept: set[str] | None = None
        #: Jobs the executor still has room for (None: no bound, like the local executor).
        self.room: int | None = None
        self.abort_ends_start = False
        #: Task ids ``abort`` was called for, in order.
        self.aborted: list[str] = []
        self._aborts: dict[str, asyncio.Event] = {}
        self._pid = 100

    def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def start(self, spec: JobSpec, limits: JobLimits) -> FakeHandle:
        if self.gate is not None:
            aborted = self._aborts.setdefault(spec.task_id, asyncio.Event())
            waits = [asyncio.ensure_future(self.gate.wait()), asyncio.ensure_future(aborted.wait())]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()
            if aborted.is_set():
                raise StartAborted("aborted before its process existed")
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc
        self._pid += 1
        handle = FakeHandle(self._pid, self._notify)
        self.specs[spec.task_id] = spec
        self.handles[spec.task_id] = handle
        self.order.append(spec.task_id)
        return handle

    def abort(self, task_id: str) -> None:
        self.aborted.append(task_id)
        if self.abort_ends_start:
            self._aborts.setdefault(task_id, asyncio.Event()).set()

    def admit(self, device: str, limits: JobLimits) -> bool:
        if self.room is None:
            return True
        if self.room <= 0:
            return False
        self.room -= 1
        return True

    def adopt(self, task: TaskRecord) -> FakeHandle | None:
        return self.adoptable.get(task.pid) if task.pid is not None else None

    def remove_leftovers(self, keep: Collection[str]) -> None:
        self.kept = set(keep)


class Rig:
    def __init__(self, home: Path, *, grace: float = 30.0, limit: int = 8, queue_timeout: float = 0.0) -> None:
        self.settings = Settings(
            home=home, runtime_dir=home / "run", grace_seconds=grace, job_memory_mb=512, queue_timeout=queue_timeout
        )
        self.store = Store(self.settings.db_path)
        self.tasks: dict[str, TaskRecord] = {}
        self.changed = asyncio.Event()
        self.pipeline = Pipeline(self.store, self._published, self.tasks)
        self.scheduler = Scheduler({"cpu": {"diagnostic": limit}})
        self.executor = FakeExecutor(self.changed.set)
        self.lifecycle = Lifecycle(
            self.settings,
            self.store,
            self.scheduler,
            self.pipeline,
            self.executor,
            self.tasks,
            on_change=self.changed.set,
        )

    def _published(self, out: list[tuple[bytes, bytes]]) -> None:
        self.changed.set()

    def record(self, task_id: str, *, priority: int = 5, status: str = PENDING) -> TaskRecord:
        now = time.time()
        task = TaskRecord(
            task_id, "diagnostic", "diagnostic", {}, "cpu", priority, None, None,
            status=status, created_at=now, updated_at=now, task_dir=str(self.settings.tasks_dir / task_id),
        )  # fmt: skip
        self.store.insert_tasks([task])
        return task

    def submit(self, task_id: str, *, priority: int = 5) -> TaskRecord:
        task = self.record(task_id, priority=priority)
        self.lifecycle.enqueue([task])
        return task

    async def until(self, predicate: Callable[[], bool], what: str) -> None:
        try:
            async with asyncio.timeout(WAIT):
                while not predicate():
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            raise AssertionError(f"{what}: not within {WAIT} s") from None

    async def started(self, task_id: str) -> FakeHandle:
        """The task's handle once the lifecycle holds it (its "started on" event is stored)."""
        await self.until(lambda: self.running_handle(task_id) is not None, f"{task_id} started")
        return self.executor.handles[task_id]

    def running_handle(self, task_id: str) -> Any:
        job = self.lifecycle.running.get(task_id)
        return job.handle if job is not None else None

    async def final(self, task_id: str) -> TaskRecord:
        await self.until(lambda: task_id not in self.tasks, f"{task_id} final")
        task = self.store.get_task(task_id)
        assert task is not None
        return task

    def events(self, task_id: str) -> list[dict[str, Any]]:
        return [orjson.loads(raw) for raw in self.store.events_after(task_id, 0, 10_000)]

    def messages(self, task_id: str) -> list[str]:
        return [e["message"] for e in self.events(task_id)]


def runner_event(task_id: str, rseq: int, **fields: Any) -> bytes:
    """One runner event as the runner encodes it (a log line unless ``fields`` say otherwise)."""
    event = {
        "rseq": rseq,
        "task_id": task_id,
        "timestamp": now_iso(),
        "kind": "log",
        "level": "INFO",
        "message": f"e{rseq}",
    }
    return orjson.dumps({**event, **fields})
