"""A task's life in the supervisor, from queued to reaped, and its recovery after a restart.

``enqueue`` → ``schedule`` (once committed: the scheduler places it, a slot is held) →
``_start`` (job spec, ``Executor.start``, then wait) → ``_reap`` (journal tail, outcome,
cleanup) → ``finish`` (the final record, the slot freed, the queue moves on). ``cancel`` takes a
queued task out at once; a running one gets ``terminate``, then ``kill`` once ``grace_seconds``
are over; one still starting has its start aborted (``Executor.abort``: it ends ``cancelled`` as
soon as the executor says nothing of it is left, or is stopped once its process exists). A task
queued longer than ``queue_timeout`` fails with that reason (``supervisor.queue_deadline``).
``close`` starts nothing more (pending tasks stay pending); ``stop_jobs`` cancels what runs and waits for it;
``kill_jobs`` is the impatient second step.

``recover`` (on start) re-queues pending tasks in their order and adopts running tasks whose
process the executor still finds (same pid and start time); the others end after their journal
has been read — with the runner's own final status when it reported one, failed otherwise —
so no task stays ``running`` forever and no journaled event is lost.

The lifecycle owns the live tasks (``tasks``: pending and running, the authoritative copy while
they live; the pipeline looks runners' tasks up in the same dict) and never knows which
executor runs them (``supervisor.executor``). No sockets, no clock of its own: tests drive it
in-process with a fake executor.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import orjson

from protocol.events import LOG, STATUS
from protocol.settings import Settings
from protocol.tasks import CANCELLED, FAILED, PENDING, RUNNING, TaskRecord
from supervisor import jobs
from supervisor.backlog import DISK_ERRORS, retry_delays
from supervisor.executor import Executor, JobHandle, RunnerLost, StartAborted, release
from supervisor.job_cgroup import JobLimits
from supervisor.pipeline import Pipeline
from supervisor.queue_deadline import QueueDeadline
from supervisor.scheduler import Scheduler
from supervisor.store import Store

log = logging.getLogger(__name__)

#: Journal lines stored per step when catching up (the loop runs other work between steps): a
#: step parses and checks each line in full, about 20 µs, so 250 hold the loop ~5 ms.
CATCH_UP_CHUNK = 250
#: Seconds an exited runner's reaper waits for the events already on the socket to be ingested
#: before it reads the journal's tail (``supervisor.readers.Drained``).
DRAIN_SECONDS = 1.0
#: Beyond the grace period, how long ``stop_jobs`` waits for the kills to land; then for the
#: reaps to finish their bookkeeping.
KILL_SECONDS, REAP_SECONDS = 30.0, 10.0


@dataclass(eq=False)
class RunningTask:
    """A placed task's process (``handle`` once started) and what was asked of it."""

    task_id: str
    handle: JobHandle | None = None
    cancel_reason: str | None = None
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    stopper: asyncio.Task[None] | None = None


class Lifecycle:
    """Owns the live tasks and their processes (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        scheduler: Scheduler,
        pipeline: Pipeline,
        executor: Executor,
        tasks: dict[str, TaskRecord],
        *,
        on_change: Callable[[], None] = lambda: None,
        drained: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        """``tasks``: the live tasks, shared with ``pipeline``. ``on_change``: called after
        the queue or the running set may have changed (the daemon's systemd status).
        ``drained(timeout)``: returns once the events already on the socket are ingested
        (``supervisor.readers.Drained``; the reaper reads a journal's tail after it)."""
        self._settings = settings
        self._store = store
        self._scheduler = scheduler
        self._pipeline = pipeline
        self._executor = executor
        self.tasks = tasks
        self.running: dict[str, RunningTask] = {}
        self.closing = False
        self._on_change = on_change
        self._drained = drained
        self._limits = JobLimits(settings.job_memory_mb, settings.job_cpus, settings.job_pids, settings.job_cpu_weight)
        self._background: set[asyncio.Task[Any]] = set()
        self._deadline = QueueDeadline(scheduler, settings.queue_timeout, self._expired)

    # -- queue ---------------------------------------------------------------------------
    def enqueue(self, tasks: list[TaskRecord]) -> None:
        """Queue newly stored tasks; once committed (a store batch's end), start what may start.
        Rolled back instead (a write the disk refused), they leave the queue, never started."""
        now = asyncio.get_running_loop().time()
        self._store.on_rollback(partial(self._unqueue, tasks))
        for task in tasks:
            self.tasks[task.task_id] = task
            self._scheduler.push(task.task_id, task.task_type, task.requested_device, task.priority, now)
            self._pipeline.emit(task, LOG, f"queued (priority {task.priority}, device {task.requested_device})")
        self._store.commit(after=self.schedule)

    def _unqueue(self, tasks: list[TaskRecord]) -> None:
        for task in tasks:
            if self._scheduler.remove(task.task_id):
                self.tasks.pop(task.task_id, None)

    def schedule(self) -> None:
        """Start every queued task that has room now (nothing once ``close``\\ d)."""
        if self.closing:
            return
        for placement in self._scheduler.place(lambda device: self._executor.admit(device, self._limits)):
            task = self.tasks[placement.task_id]
            task.status = RUNNING
            task.device = placement.device
            task.started_at = time.time()
            task.message = f"starting on {placement.device}"
            job = RunningTask(task.task_id)
            self.running[task.task_id] = job
            if placement.warning:
                self._pipeline.emit(task, LOG, placement.warning, "WARNING")
            else:
                self._pipeline.save(task)
            self._in_background(self._start(task, job))
        self._deadline.arm()
        self._on_change()

    def _expired(self, task_id: str, message: str) -> None:
        self.finish(self.tasks[task_id], FAILED, message)

    def _in_background(self, coro: Coroutine[Any, Any, None]) -> None:
        t = asyncio.ensure_future(coro)
        self._background.add(t)
        t.add_done_callback(self._background.discard)

    # -- a task's process ----------------------------------------------------------------
    async def _start(self, task: TaskRecord, job: RunningTask) -> None:
        assert task.device is not None and task.task_dir is not None
        try:
            spec = jobs.job_spec(self._settings, task, task.device)
            task_dir = os.path.realpath(task.task_dir)
            os.makedirs(task_dir, mode=0o700, exist_ok=True)
            if task.last_rseq == 0:
                # A journal left by a deleted task of the same id is not this task's.
                try:
                    os.unlink(spec.journal_path)
                except FileNotFoundError:
                    pass
            self._pipeline.attach(task)
            handle = await self._executor.start(spec, self._limits)
        except StartAborted as exc:  # cancelled while the executor was still starting it
            log.info("task %s: start aborted: %s", task.task_id, exc)
            job.exited.set()
            self.finish(task, CANCELLED, f"{job.cancel_reason or 'cancelled'} ({exc})")
            return
        except Exception as exc:
            log.exception("task %s: could not start its runner", task.task_id)
            job.exited.set()
            self.finish(task, FAILED, f"could not start the runner: {type(exc).__name__}: {exc}")
            return
        job.handle = handle
        task.pid = handle.pid
        task.pid_started = handle.create_time
        task.cgroup = orjson.dumps(handle.cgroup).decode() if handle.cgroup else None
        task.limits_enforced = handle.limits_enforced
        self._pipeline.emit(task, LOG, f"started on {task.device} (pid {handle.pid}, {self._executor.mode} start)")
        if handle.warning:
            self._pipeline.emit(task, LOG, handle.warning, "WARNING")
        if job.cancel_reason is not None:
            job.stopper = asyncio.ensure_future(self._stop(job, handle))
        await self._reap(task, job, handle)

    async def _reap(self, task: TaskRecord, job: RunningTask, handle: JobHandle) -> None:
        try:
            info = await handle.wait()
        except RunnerLost as exc:
            log.warning("task %s: %s", task.task_id, exc)
            lost: str | None = str(exc)
        except Exception as exc:
            log.exception("task %s: waiting for pid %d failed", task.task_id, handle.pid)
            lost = f"runner lost: {type(exc).__name__}: {exc}"
        else:
            lost = None
        if lost is not None:
            job.exited.set()
            await self._catch_up(task)
            await asyncio.to_thread(release, handle, f"task {task.task_id}")
            status, message = self._pipeline.final_status(task.task_id) or (FAILED, lost)
            self.finish(task, status, message)
            return
        job.exited.set()
        # Events still in flight on the socket are all in the journal: read its tail.
        await self._catch_up(task)
        # Killing strays and removing cgroups can take the kernel a while (freeing a job's
        # gigabytes after an OOM kill): in a worker thread, never on the loop.
        await asyncio.to_thread(release, handle, f"task {task.task_id}")
        reason = job.cancel_reason or "cancelled"
        report = self._pipeline.exit_report(task.task_id)
        if report:
            reason = f"{reason} (the runner reported on its way out: {report})"
        final, cancelled = self._pipeline.final_status(task.task_id), job.cancel_reason is not None
        result = jobs.outcome(final, info.code, info.oom_killed, info.memory_limit_mb, cancelled, reason)
        log.info("task %s: %s (%s; exit %s)", task.task_id, result.status, result.message, info.code)
        self.finish(task, result.status, result.message, code=info.code, announce=result.from_supervisor)

    async def _catch_up(self, task: TaskRecord) -> None:
        """Store the journal's unread tail a chunk at a time (tens of thousands of events after a
        flood: the loop answers control requests between chunks), once the events on the socket
        are in; what the disk refuses, again until stored (the task keeps its slot until then)."""
        if self._drained is not None:
            await self._drained(DRAIN_SECONDS)
        for delay in retry_delays():
            try:
                while self._pipeline.catch_up(task, CATCH_UP_CHUNK) >= CATCH_UP_CHUNK:
                    await asyncio.sleep(0)
                return
            except DISK_ERRORS as exc:
                log.error("task %s: its journal's end not stored (%s); again in %g s", task.task_id, exc, delay)
                await asyncio.sleep(delay)

    def finish(
        self, task: TaskRecord, status: str, message: str, *, code: int | None = None, announce: bool = True
    ) -> None:
        """Record a task's end, free its slot and move the queue on. ``announce``: store and
        publish a final status event (False when the runner reported its own end: its held
        final event goes out with the final record instead)."""
        task.status = status
        task.message = message
        task.exit_code = code
        task.finished_at = time.time()
        if task.started_at is None:
            task.started_at = task.finished_at
        # The runner's own final event goes with the final record (``announce`` False); one not
        # held any more (the disk refused it, its journal did not have it) is announced instead.
        if announce or not self._pipeline.release_final(task):
            level = "ERROR" if status == FAILED else "WARNING" if status == CANCELLED else "INFO"
            self._pipeline.emit(task, STATUS, message, level, status=status)
        self._scheduler.release(task.task_id)
        self.tasks.pop(task.task_id, None)
        self.running.pop(task.task_id, None)
        self._pipeline.detach(task.task_id)
        self.schedule()

    # -- cancel --------------------------------------------------------------------------
    def cancel(self, task_id: str, reason: str) -> None:
        """Cancel a live task: a queued one at once, a running one by terminate, grace, kill."""
        task = self.tasks.get(task_id)
        if task is None:
            return
        if task.status == PENDING:
            self._scheduler.remove(task_id)
            self.finish(task, CANCELLED, reason)
            return
        job = self.running.get(task_id)
        if job is None or job.cancel_reason is not None:
            return
        job.cancel_reason = reason
        self._pipeline.cancelling(task_id)
        self._pipeline.emit(task, LOG, f"cancel requested: {reason}", "WARNING")
        if job.handle is not None:
            job.stopper = asyncio.ensure_future(self._stop(job, job.handle))
        else:
            # Still starting: an executor whose start may wait (a runner host Ray has not placed)
            # ends it now (``StartAborted``); otherwise _start starts the stopper once the
            # runner's process exists.
            self._executor.abort(task_id)

    async def _stop(self, job: RunningTask, handle: JobHandle) -> None:
        handle.terminate()
        grace = self._settings.grace_seconds
        try:
            await asyncio.wait_for(job.exited.wait(), grace)
            return
        except TimeoutError:
            pass
        task = self.tasks.get(job.task_id)
        if task is not None:
            self._pipeline.emit(task, LOG, f"runner did not stop within {grace:g} s: killing it", "WARNING")
        handle.kill()

    # -- shutdown ------------------------------------------------------------------------
    def close(self) -> None:
        """Start no more tasks; pending ones stay pending (stored) for the next start."""
        self.closing = True
        self._deadline.stop()

    async def stop_jobs(self, reason: str) -> None:
        """Cancel every running job (grace, then kill) and wait for them to end, within
        bounds: a job that does not end in time is left to the next start to adopt or fail."""
        for task_id in list(self.running):
            self.cancel(task_id, reason)
        waits = [job.exited.wait() for job in self.running.values()]
        if waits:
            try:
                await asyncio.wait_for(asyncio.gather(*waits), self._settings.grace_seconds + KILL_SECONDS)
            except TimeoutError:
                # Still starting (a fork server importing torch), say: never hang the shutdown.
                log.error("%d job(s) did not end in time; leaving them to the next start", len(self.running))
        # Reaps finish their bookkeeping in the background tasks; let them.
        if self._background:
            await asyncio.wait(self._background, timeout=REAP_SECONDS)

    def kill_jobs(self) -> None:
        """Kill every running job at once (their reaps record them as cancelled if asked to)."""
        for job in self.running.values():
            if job.handle is not None:
                job.handle.kill()

    def processes(self) -> list[tuple[TaskRecord, JobHandle]]:
        """Each running task with its process (for ``ps``)."""
        return [(self.tasks[t], job.handle) for t, job in self.running.items() if job.handle and t in self.tasks]

    # -- recovery ------------------------------------------------------------------------
    def recover(self) -> None:
        """Re-queue pending tasks, adopt live runners, end lost ones (see the module docstring)."""
        for task in self._store.tasks_in_order(RUNNING):
            if task.task_type == "serving":
                continue  # a deployment: ``supervisor.serving`` brings it back
            self.tasks[task.task_id] = task
            self._pipeline.attach(task)
            handle = self._executor.adopt(task)
            # Events journaled while we were away come first (all at once: nothing else is
            # served before recovery ends). A full disk: read again until stored (the reaper's
            # ``_catch_up``), a lost runner's task ended only then.
            try:
                self._pipeline.catch_up(task)
            except DISK_ERRORS as exc:
                log.error("task %s: its journal not stored (%s)", task.task_id, exc)
                if handle is None:
                    self._in_background(self._end_lost_later(task))
                    continue
            if handle is None:
                self._end_lost(task)
                continue
            if task.pid is None:  # the previous supervisor died before it recorded the start
                task.pid, task.pid_started = handle.pid, handle.create_time
            job = RunningTask(task.task_id, handle)
            self.running[task.task_id] = job
            self._scheduler.occupy(task.task_id, task.task_type, task.device or "cpu")
            self._pipeline.emit(task, LOG, f"adopted after a supervisor restart (pid {handle.pid})")
            self._in_background(self._reap(task, job, handle))
        self._executor.remove_leftovers(keep=set(self.running))
        pending = self._store.tasks_in_order(PENDING)
        now = asyncio.get_running_loop().time()
        for task in pending:
            self.tasks[task.task_id] = task
            self._scheduler.push(task.task_id, task.task_type, task.requested_device, task.priority, now)
        if pending:
            log.info("recovered %d pending task(s)", len(pending))
        self.schedule()

    async def _end_lost_later(self, task: TaskRecord) -> None:
        await self._catch_up(task)
        self._end_lost(task)

    def _end_lost(self, task: TaskRecord) -> None:
        """End a task whose runner is gone: as the runner said (its final event), else failed."""
        final = self._pipeline.final_status(task.task_id)
        status, message = final or (FAILED, "runner lost while the supervisor was down")
        log.warning("task %s: runner (pid %s) not found after restart: %s", task.task_id, task.pid, message)
        self.finish(task, status, message, announce=final is None)
