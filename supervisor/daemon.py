"""The supervisor daemon: one asyncio loop owning the sockets, the store and the runners.

Sockets (``protocol.addresses``, runtime dir 0700):

- control ROUTER: one request → one immediate reply (``supervisor.control``); never waits on
  a job.
- events-in SUB (subscribed to everything): runners' XPUBs connect here. Drained in batches
  (up to ``BATCH`` events without blocking after the first message; a runner sends
  ``[task_id, event, event, …]``), each batch stored in one transaction
  and then published (``supervisor.pipeline``).
- events-out XPUB (topic = task id, payload = the stored event JSON with ``seq``): web's SUB
  connects here. An XPUB rather than a PUB so the daemon can count subscriptions (``health``),
  which lets a client know its subscription is live before it relies on it.

A task's life here: ``enqueue`` → ``schedule`` (scheduler places it) → ``_run`` (spawn, then
wait) → ``_reap`` (journal tail, outcome, cleanup, release, schedule again). ``cancel`` sends
SIGTERM to the job, waits ``grace_seconds``, then SIGKILL. Signals (SIGTERM/SIGINT) are
commands: the first starts ``shutdown`` (running jobs cancelled with the grace period; pending
tasks stay pending for the next start), a second kills the jobs at once.

On start, ``recover`` re-queues pending tasks in order and adopts running tasks whose runner
is still alive (same pid and start time); the others fail with a clear reason after their
journal has been read — so no task stays ``running`` forever and no journaled event is lost.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import signal
import sqlite3
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
import zmq
import zmq.asyncio

from protocol.addresses import ensure_runtime_dir
from protocol.events import LOG, STATUS
from protocol.settings import Settings
from protocol.tasks import CANCELLED, FAILED, PENDING, RUNNING, TaskRecord
from supervisor import jobs
from supervisor.control import Control
from supervisor.gpu import Gpus
from supervisor.pipeline import Pipeline
from supervisor.scheduler import Scheduler
from supervisor.spawner import JobLimits, RunnerHandle, Spawner
from supervisor.store import Store

try:
    from supervisor import notify
except ImportError:  # pragma: no cover - the ops engineer's module; optional outside systemd
    notify = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

#: Runner events processed (and committed) per batch, about (a message is not split).
BATCH = 2000
#: Queue lengths, in messages. A runner's message may carry up to a thousand events, so the
#: inbound queue stays short (bounded memory); runners block (XPUB_NODROP) when it is full,
#: which is the back-pressure we want. Outbound, a subscriber past its queue loses live events
#: and fetches them again through ``logs`` (up to ~100 MB of 1 KiB events per subscriber).
EVENTS_IN_HWM = 1_000
EVENTS_OUT_HWM = 100_000
#: A control message this much over ``MAX_MESSAGE_BYTES`` is cut off by ZeroMQ (the peer is
#: disconnected) instead of being read into memory; up to it, the client gets ``too_large``.
CONTROL_MAX_BYTES = 16 * 1024 * 1024
#: Seconds between WAL checkpoints while events arrive.
CHECKPOINT_SECONDS = 1.0
#: Journal lines stored per step when catching up (the loop runs other work between steps).
CATCH_UP_CHUNK = 1000
#: The loop-lag probe: its period, and how many periods ``loop_lag_max`` looks back over.
LAG_PROBE_SECONDS = 0.25
LAG_WINDOW = 240
_NOWAIT = int(zmq.NOBLOCK)
#: Most events in one events-out message.
_MAX_BATCH = 512
_MORE_NOWAIT = int(zmq.NOBLOCK) | int(zmq.SNDMORE)
_RCVMORE = int(zmq.RCVMORE)


class AlreadyRunning(RuntimeError):
    """Another daemon holds this home's lock."""


@dataclass(eq=False)
class _Runner:
    """A running task's process and what was asked of it."""

    task_id: str
    handle: RunnerHandle | None = None
    cancel_reason: str | None = None
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    stopper: asyncio.Task[None] | None = None


class Daemon:
    """The supervisor. ``await Daemon(settings).serve()`` runs until a signal or ``shutdown``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pid = os.getpid()
        self.started = time.monotonic()
        #: Live tasks (pending and running), the authoritative copy while they live.
        self.tasks: dict[str, TaskRecord] = {}
        self.runners: dict[str, _Runner] = {}
        self.subscriptions = 0
        self.gpus = Gpus()
        self.scheduler = Scheduler(settings.limits, self.gpus.count, self.gpus.free_memory)
        self.spawner = Spawner(settings)
        self.store: Store
        self.pipeline: Pipeline
        self.control = Control(self)
        self.should_exit = False
        self.force_exit = False
        self._exit = asyncio.Event()
        self._ctx: zmq.asyncio.Context | None = None
        self._pub: zmq.Socket[bytes] | None = None
        self._spawner_ready: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._last_status = ""
        self._ready = False  # READY=1 sent: STATUS= updates may follow
        #: How late the loop ran the lag probe, last time and over the last minute or so.
        self._lags: deque[float] = deque([0.0], maxlen=LAG_WINDOW)

    # -- life --------------------------------------------------------------------------
    async def serve(self) -> int:
        """Run until shut down; return the exit code."""
        loop = asyncio.get_running_loop()
        self._lock()
        for line in self.gpus.summary_lines():
            log.info("hardware: %s", line)
        self.store = Store(self.settings.db_path)
        self.settings.tasks_dir.mkdir(parents=True, exist_ok=True)
        ensure_runtime_dir(self.settings.runtime_dir)
        self._ctx = zmq.asyncio.Context()
        router, sub, xpub = self._bind(self._ctx)
        self._pub = zmq.Socket.shadow(xpub.underlying)
        self.pipeline = Pipeline(self.store, self._publish, self.tasks)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.handle_exit, sig)
        self._spawner_ready = asyncio.ensure_future(self.spawner.start())
        self._spawner_ready.add_done_callback(self._spawner_started)
        workers = [
            asyncio.ensure_future(self._control_loop(router)),
            asyncio.ensure_future(self._events_loop(sub)),
            asyncio.ensure_future(self._subscription_loop(xpub)),
        ]
        workers.append(asyncio.ensure_future(self._checkpoint_loop()))
        workers.append(asyncio.ensure_future(self._lag_loop()))
        interval = notify.watchdog_interval() if notify else None
        if interval:
            workers.append(asyncio.ensure_future(self._watchdog_loop(interval)))
        try:
            await self.recover()
            log.info(
                "supervisor ready (pid %d, %s start, control %s)",
                self.pid,
                self.settings.start_mode,
                self.settings.addresses.control,
            )
            self._last_status = self._status_text()
            self._ready = True
            if notify:
                notify.ready(self._last_status)
            await self._exit.wait()
            await self._shutdown_jobs()
        finally:
            if notify:
                notify.stopping("stopping")
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            try:
                await asyncio.wait_for(self.spawner.stop(), 10)
            except Exception:
                log.exception("spawner did not stop cleanly")
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            for s in (router, sub, xpub):
                s.close(linger=0)
            self._ctx.term()
            self.store.close()
            log.info("supervisor stopped")
        return 0

    def _lock(self) -> None:
        """One daemon per home: a second one would share the store and steal the sockets.
        The kernel drops the lock when this process dies, even by SIGKILL."""
        self.settings.home.mkdir(parents=True, exist_ok=True)
        path = self.settings.home / "supervisor.lock"
        self._lock_fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(self._lock_fd, 32, 0).decode(errors="replace").strip() or "?"
            raise AlreadyRunning(f"another supervisor (pid {other}) is running with home {self.settings.home}") from None
        os.ftruncate(self._lock_fd, 0)
        os.pwrite(self._lock_fd, f"{self.pid}\n".encode(), 0)

    def _bind(self, ctx: zmq.asyncio.Context) -> tuple[Any, Any, Any]:
        addr = self.settings.addresses
        for path in ("control.sock", "events-in.sock", "events-out.sock"):
            # A stale socket file from a killed daemon: binding over it is what we want.
            try:
                (self.settings.runtime_dir / path).unlink()
            except FileNotFoundError:
                pass
        router = ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.MAXMSGSIZE, CONTROL_MAX_BYTES)
        router.setsockopt(zmq.ROUTER_HANDOVER, 1)
        router.bind(addr.control)
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.RCVHWM, EVENTS_IN_HWM)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.bind(addr.events_in)
        xpub = ctx.socket(zmq.XPUB)
        xpub.setsockopt(zmq.SNDHWM, EVENTS_OUT_HWM)
        xpub.setsockopt(zmq.XPUB_VERBOSER, 1)  # every (un)subscription, so the count is right
        xpub.bind(addr.events_out)
        for s in (router, sub, xpub):
            s.setsockopt(zmq.LINGER, 0)
        return router, sub, xpub

    def _spawner_started(self, fut: asyncio.Future[None]) -> None:
        if not fut.cancelled() and fut.exception() is not None:
            log.error("spawner failed to start: %s", fut.exception())

    def handle_exit(self, sig: int) -> None:
        """Signal handler (through the loop): the first signal shuts down, the second kills."""
        if self.should_exit:
            log.warning("%s again: killing running jobs now", signal.Signals(sig).name)
            self.force_exit = True
            for runner in self.runners.values():
                if runner.handle is not None:
                    runner.handle.kill()
            return
        log.info("%s: shutting down (running jobs are cancelled, grace %.1f s)", signal.Signals(sig).name, self.settings.grace_seconds)
        self.should_exit = True
        self._exit.set()

    def shutdown(self) -> None:
        """Stop serving (same path as SIGTERM)."""
        self.handle_exit(signal.SIGTERM)

    async def _shutdown_jobs(self) -> None:
        if notify:
            notify.stopping(f"stopping: cancelling {len(self.runners)} running job(s)")
        for task_id in list(self.runners):
            self.cancel(task_id, "cancelled: the supervisor is shutting down")
        waits = [r.exited.wait() for r in self.runners.values()]
        if waits:
            # terminate → grace → kill runs in each stopper; allow for the kill to land.
            try:
                await asyncio.wait_for(asyncio.gather(*waits), self.settings.grace_seconds + 30)
            except TimeoutError:
                # Still starting (a fork server importing torch), say: the next start
                # adopts or fails them; never hang the shutdown.
                log.error("%d job(s) did not end in time; leaving them to the next start", len(self.runners))
        # Reaps finish their bookkeeping in the background tasks; let them.
        if self._background:
            await asyncio.wait(self._background, timeout=10)

    # -- loops ---------------------------------------------------------------------------
    async def _control_loop(self, router: Any) -> None:
        while True:
            try:
                frames = await router.recv_multipart()
            except zmq.ZMQError as exc:
                log.error("control socket receive failed: %s", exc)
                continue
            if len(frames) < 2:
                continue
            reply = self.control.handle(frames[-1])
            try:
                await router.send_multipart([*frames[:-1], reply])
            except zmq.ZMQError as exc:  # the client went away
                log.warning("control reply not sent: %s", exc)

    async def _events_loop(self, sub: Any) -> None:
        drain: zmq.Socket[bytes] = zmq.Socket.shadow(sub.underlying)
        while True:
            batch = [await sub.recv_multipart()]
            count = len(batch[0]) - 1
            # Take what is already queued without waiting: one transaction for all of it.
            while count < BATCH:
                try:
                    msg = _recv_message(drain)
                except zmq.Again:
                    break
                batch.append(msg)
                count += len(msg) - 1
            try:
                self.pipeline.ingest(batch)
            except Exception:
                log.exception("event batch of %d failed", len(batch))
            # A receive with a message waiting completes without yielding, so a flood of
            # events would never let the loop run anything else: yield between batches, so
            # control requests are answered within one batch however many events arrive.
            await asyncio.sleep(0)

    async def _subscription_loop(self, xpub: Any) -> None:
        while True:
            msg = await xpub.recv()
            if msg[:1] == b"\x01":
                self.subscriptions += 1
            elif msg[:1] == b"\x00":
                self.subscriptions = max(0, self.subscriptions - 1)

    async def _checkpoint_loop(self) -> None:
        """WAL checkpoints in a worker thread, off the event path (see ``Store.checkpoint``)."""
        stored = -1
        while True:
            await asyncio.sleep(CHECKPOINT_SECONDS)
            if self.pipeline.received == stored:
                continue  # nothing new since the last one
            stored = self.pipeline.received
            try:
                await asyncio.to_thread(self.store.checkpoint)
            except sqlite3.Error as exc:
                log.warning("WAL checkpoint failed: %s", exc)

    async def _lag_loop(self) -> None:
        """Measure how late the loop runs a timer: anything blocking the loop shows here."""
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(LAG_PROBE_SECONDS)
            self._lags.append(max(0.0, loop.time() - start - LAG_PROBE_SECONDS))

    @property
    def loop_lag(self) -> float:
        """The last lag measured (seconds)."""
        return self._lags[-1]

    @property
    def loop_lag_max(self) -> float:
        """The worst lag over the last ``LAG_WINDOW`` probes (about a minute)."""
        return max(self._lags)

    async def _watchdog_loop(self, interval: float) -> None:
        while True:
            notify.watchdog()
            await asyncio.sleep(interval)

    def _publish(self, out: list[tuple[bytes, bytes]]) -> None:
        pub = self._pub
        assert pub is not None
        # Consecutive events of one task go out as one message [task_id, event, event, ...]
        # (protocol.events): a message costs several microseconds whatever its size.
        i, n = 0, len(out)
        while i < n:
            topic = out[i][0]
            j = i + 1
            while j < n and j - i < _MAX_BATCH and out[j][0] == topic:
                j += 1
            try:
                # Plain sends with int flags: send_multipart's enum arithmetic cost as much
                # as the sends themselves at tens of thousands of events a second.
                pub.send(topic, _MORE_NOWAIT)
                for k in range(i, j - 1):
                    pub.send(out[k][1], _MORE_NOWAIT)
                pub.send(out[j - 1][1], _NOWAIT)
            except zmq.Again:
                # No room (XPUB drops whole messages at the high-water mark, so a topic frame
                # is never left alone); the subscriber fetches the rest through ``logs``.
                pass
            i = j

    # -- tasks ---------------------------------------------------------------------------
    def enqueue(self, tasks: list[TaskRecord]) -> None:
        """Queue newly stored tasks and start what may start."""
        for task in tasks:
            self.tasks[task.task_id] = task
            self.scheduler.push(task.task_id, task.task_type, task.requested_device, task.priority)
            self.pipeline.emit(task, LOG, f"queued (priority {task.priority}, device {task.requested_device})")
        self.schedule()

    def schedule(self) -> None:
        """Start every queued task that has room now."""
        if self.should_exit:
            return
        for placement in self.scheduler.place():
            task = self.tasks[placement.task_id]
            task.status = RUNNING
            task.device = placement.device
            task.started_at = time.time()
            task.message = f"starting on {placement.device}"
            runner = _Runner(task.task_id)
            self.runners[task.task_id] = runner
            if placement.warning:
                self.pipeline.emit(task, LOG, placement.warning, "WARNING")
            else:
                self.store.update_task(task)
            self._spawn_task(self._run(task, runner))
        self._status_changed()

    def _spawn_task(self, coro: Any) -> None:
        t = asyncio.ensure_future(coro)
        self._background.add(t)
        t.add_done_callback(self._background.discard)

    async def _run(self, task: TaskRecord, runner: _Runner) -> None:
        assert task.device is not None and task.task_dir is not None
        try:
            spec = jobs.job_spec(self.settings, task, task.device)
            task_dir = os.path.realpath(task.task_dir)
            os.makedirs(task_dir, mode=0o700, exist_ok=True)
            if task.last_rseq == 0:
                # A journal left by a deleted task of the same id is not this task's.
                try:
                    os.unlink(spec.journal_path)
                except FileNotFoundError:
                    pass
            self.pipeline.attach(task)
            if self._spawner_ready is not None:
                await self._spawner_ready
            limits = JobLimits(
                self.settings.job_memory_mb, self.settings.job_cpus, self.settings.job_pids, self.settings.job_cpu_weight
            )
            handle = await self.spawner.spawn(spec, limits)
        except Exception as exc:
            log.exception("task %s: could not start its runner", task.task_id)
            runner.exited.set()
            self._finish(task, FAILED, f"could not start the runner: {type(exc).__name__}: {exc}", None, True)
            return
        runner.handle = handle
        task.pid = handle.pid
        task.pid_started = handle.create_time
        task.cgroup = orjson.dumps(handle.cgroup).decode() if handle.cgroup else None
        task.limits_enforced = handle.limits_enforced
        self.pipeline.emit(task, LOG, f"started on {task.device} (pid {handle.pid}, {self.spawner.mode} start)")
        if handle.warning:
            self.pipeline.emit(task, LOG, handle.warning, "WARNING")
        if runner.cancel_reason is not None:
            runner.stopper = asyncio.ensure_future(self._stop(runner))
        await self._reap(task, runner)

    async def _reap(self, task: TaskRecord, runner: _Runner) -> None:
        handle = runner.handle
        assert handle is not None
        try:
            info = await handle.wait()
        except Exception as exc:
            log.exception("task %s: waiting for pid %d failed", task.task_id, handle.pid)
            runner.exited.set()
            await self._catch_up(task)
            await asyncio.to_thread(self._cleanup, task, handle)
            final = self.pipeline.final_status(task.task_id)
            if final is None:
                final = (FAILED, f"runner lost: {type(exc).__name__}: {exc}")
            self._finish(task, final[0], final[1], None, True)
            return
        runner.exited.set()
        # Events still in flight on the socket are all in the journal: read its tail.
        await self._catch_up(task)
        # Killing strays and removing cgroups can take the kernel a while (freeing a job's
        # gigabytes after an OOM kill): in a worker thread, never on the loop.
        await asyncio.to_thread(self._cleanup, task, handle)
        reason = runner.cancel_reason or "cancelled"
        report = self.pipeline.exit_report(task.task_id)
        if report:
            reason = f"{reason} (the runner reported on its way out: {report})"
        result = jobs.outcome(
            self.pipeline.final_status(task.task_id),
            info.code,
            info.oom_killed,
            info.memory_limit_mb,
            runner.cancel_reason is not None,
            reason,
        )
        log.info("task %s: %s (%s; exit %s)", task.task_id, result.status, result.message, info.code)
        self._finish(task, result.status, result.message, info.code, result.from_supervisor)

    async def _catch_up(self, task: TaskRecord) -> None:
        """Store the journal's unread tail (tens of thousands of events after a flood) a chunk
        at a time, letting the loop answer control requests between chunks."""
        while self.pipeline.catch_up(task, CATCH_UP_CHUNK) >= CATCH_UP_CHUNK:
            await asyncio.sleep(0)

    def _cleanup(self, task: TaskRecord, handle: RunnerHandle) -> None:
        """Nothing of a job outlives its runner: kill what is left, remove its cgroups."""
        try:
            left = handle.alive_pids()
            if left:
                log.warning("task %s: killing %d leftover process(es) %s", task.task_id, len(left), left)
                handle.kill()
        except OSError as exc:
            log.warning("task %s: leftover check failed: %s", task.task_id, exc)
        try:
            handle.cleanup()
        except OSError as exc:
            log.warning("task %s: cgroup cleanup failed: %s", task.task_id, exc)

    def _finish(self, task: TaskRecord, status: str, message: str, code: int | None, announce: bool) -> None:
        """Record a task's end, free its slot and move the queue on."""
        task.status = status
        task.message = message
        task.exit_code = code
        task.finished_at = time.time()
        if task.started_at is None:
            task.started_at = task.finished_at
        if announce:
            level = "ERROR" if status == FAILED else "WARNING" if status == CANCELLED else "INFO"
            self.pipeline.emit(task, STATUS, message, level, status=status)
        elif self.pipeline.release_final(task):
            pass  # the runner's own final event went out with the final record
        else:
            task.updated_at = task.finished_at
            self.store.update_task(task)
        self.scheduler.release(task.task_id)
        self.tasks.pop(task.task_id, None)
        self.runners.pop(task.task_id, None)
        self.pipeline.detach(task.task_id)
        self.schedule()

    def cancel(self, task_id: str, reason: str) -> None:
        """Cancel a live task: a queued one at once, a running one by SIGTERM, grace, SIGKILL."""
        task = self.tasks.get(task_id)
        if task is None:
            return
        if task.status == PENDING:
            self.scheduler.remove(task_id)
            self._finish(task, CANCELLED, reason, None, True)
            return
        runner = self.runners.get(task_id)
        if runner is None or runner.cancel_reason is not None:
            return
        runner.cancel_reason = reason
        self.pipeline.cancelling(task_id)
        self.pipeline.emit(task, LOG, f"cancel requested: {reason}", "WARNING")
        if runner.handle is not None:
            runner.stopper = asyncio.ensure_future(self._stop(runner))
        # else: _run starts the stopper once the runner's pid is known.

    async def _stop(self, runner: _Runner) -> None:
        handle = runner.handle
        assert handle is not None
        handle.terminate()
        try:
            await asyncio.wait_for(runner.exited.wait(), self.settings.grace_seconds)
            return
        except TimeoutError:
            pass
        task = self.tasks.get(runner.task_id)
        if task is not None:
            self.pipeline.emit(
                task, LOG, f"runner did not stop within {self.settings.grace_seconds:g} s: killing it", "WARNING"
            )
        handle.kill()

    # -- recovery ------------------------------------------------------------------------
    async def recover(self) -> None:
        """Re-queue pending tasks, adopt live runners, fail lost ones (see module docstring)."""
        for task in self.store.tasks_in_order(RUNNING):
            self.tasks[task.task_id] = task
            self.pipeline.attach(task)
            handle = None
            if task.pid is not None and task.pid_started is not None:
                cgroup = orjson.loads(task.cgroup) if task.cgroup else {}
                handle = self.spawner.adopt(task.pid, task.pid_started, cgroup)
            # Events journaled while we were away come first (all at once: nothing else is
            # served before recovery ends).
            self.pipeline.catch_up(task)
            if handle is None:
                final = self.pipeline.final_status(task.task_id)
                if final is not None:
                    self._release_lost(task, final[0], final[1], False)
                else:
                    self._release_lost(task, FAILED, "runner lost while the supervisor was down", True)
                continue
            runner = _Runner(task.task_id, handle)
            self.runners[task.task_id] = runner
            self.scheduler.occupy(task.task_id, task.task_type, task.device or "cpu")
            self.pipeline.emit(task, LOG, f"adopted after a supervisor restart (pid {handle.pid})")
            self._spawn_task(self._reap(task, runner))
        self._remove_leftover_cgroups()
        pending = self.store.tasks_in_order(PENDING)
        for task in pending:
            self.tasks[task.task_id] = task
            self.scheduler.push(task.task_id, task.task_type, task.requested_device, task.priority)
        if pending:
            log.info("recovered %d pending task(s)", len(pending))
        self.schedule()

    def _remove_leftover_cgroups(self) -> None:
        """Job cgroups of this instance that no adopted runner uses: a lost runner's (and any
        stray process still in them, which belongs to that job) go."""
        try:
            leftovers = self.spawner.leftovers()
        except OSError as exc:
            log.warning("could not list leftover job cgroups: %s", exc)
            return
        for task_id, dirs in leftovers.items():
            if task_id in self.runners:
                continue
            cgroup = self.spawner.cgroups.attach(dirs)
            if cgroup is not None:
                log.warning("removing leftover cgroups of task %s: %s", task_id, sorted(dirs.values()))
                cgroup.remove()

    def _release_lost(self, task: TaskRecord, status: str, message: str, announce: bool) -> None:
        log.warning("task %s: runner (pid %s) not found after restart: %s", task.task_id, task.pid, message)
        self._finish(task, status, message, None, announce)

    # -- views ---------------------------------------------------------------------------
    def runner_views(self) -> list[dict[str, Any]]:
        from supervisor.ps import runner_view

        views = []
        gpu_memory = self.gpus.pids_memory() if self.gpus.count else None
        for task_id, runner in self.runners.items():
            task = self.tasks.get(task_id)
            if runner.handle is not None and task is not None:
                views.append(runner_view(runner.handle, task, gpu_memory))
        return views

    def _status_text(self) -> str:
        return f"{self.scheduler.running_count} running, {self.scheduler.queue_length} queued"

    def _status_changed(self) -> None:
        text = self._status_text()
        if self._ready and text != self._last_status:
            self._last_status = text
            if notify:
                notify.status(text)


def _recv_message(sock: zmq.Socket[bytes]) -> list[bytes]:
    """``recv_multipart(NOBLOCK)`` without its per-frame enum arithmetic (measurable when a
    runner's message carries a thousand events): plain ints and the backend's ``get``."""
    parts = [sock.recv(_NOWAIT)]
    while sock.get(_RCVMORE):
        parts.append(sock.recv(_NOWAIT))
    return parts


async def run(settings: Settings) -> int:
    return await Daemon(settings).serve()
