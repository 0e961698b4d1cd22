"""The supervisor daemon: the composition root. One asyncio loop; this module holds the home
lock, binds the sockets, wires the parts together, runs the loops and handles the signals.

Sockets (``protocol.addresses``, runtime dir 0700):

- control ROUTER: one request → one immediate reply (``supervisor.control``); never waits on
  a job. Read by ``supervisor.readers.serve_control``: the requests queued together are
  answered with one commit.
- events-in SUB (subscribed to everything): runners' XPUBs connect here. Drained by
  ``supervisor.readers.serve_events`` in batches (a runner sends ``[task_id, events]``, its
  events packed into one frame: ``protocol.events``), each batch stored in one transaction and
  then published (``supervisor.pipeline``).
- events-out XPUB (``supervisor.events_out``): web's SUB connects here.

The parts: ``lifecycle`` (tasks and their processes: queue, start, cancel, reap, recover),
``executor`` (how a task gets its process: ``supervisor.local`` on this host), ``pipeline``
(runner events numbered, stored, published), ``scheduler``, ``store``, ``control`` (the
commands, through the ``control.Service`` this daemon implements), ``ps``, ``notify`` (systemd),
``upkeep`` (WAL checkpoints).

Stopping is one path, ``shutdown``: the SIGTERM/SIGINT handler calls it, as any other request
to stop must. The first call starts no more tasks and cancels the running ones with the grace
period (pending tasks stay pending for the next start); a second kills the jobs at once. On start, the
lifecycle's ``recover`` runs before anything else is served.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import signal
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import zmq
import zmq.asyncio

from protocol import collector
from protocol.addresses import ensure_runtime_dir
from protocol.records import HEARTBEAT_SECONDS
from protocol.settings import Settings
from protocol.tasks import RUNNING, TaskRecord
from supervisor import notify
from supervisor.backlog import retry_delays
from supervisor.control import Control
from supervisor.daemon_commands import Figures
from supervisor.events_out import EventsOut
from supervisor.executor import Executor, JobHandle
from supervisor.gpu import Gpus
from supervisor.lifecycle import Lifecycle
from supervisor.local import LocalExecutor
from supervisor.pipeline import Pipeline
from supervisor.ps import Ps
from supervisor.readers import Drained, serve_control, serve_events
from supervisor.records import Records
from supervisor.scheduler import Scheduler
from supervisor.serving.deployment import Deployment
from supervisor.serving.manager import Serving
from supervisor.serving.replica import Replica
from supervisor.store import Store
from supervisor.upkeep import checkpoints

log = logging.getLogger(__name__)

#: Inbound queue length, in messages. A runner's message may carry up to a thousand events, so
#: the queue stays short (bounded memory); runners block (XPUB_NODROP) when it is full, which
#: is the back-pressure we want.
EVENTS_IN_HWM = 1_000
#: A control message this much over ``MAX_MESSAGE_BYTES`` is cut off by ZeroMQ (the peer is
#: disconnected) instead of being read into memory; up to it, the client gets ``too_large``.
CONTROL_MAX_BYTES = 16 * 1024 * 1024
#: The loop-lag probe: its period, and how many periods ``loop_lag_max`` looks back over.
LAG_PROBE_SECONDS = 0.25
LAG_WINDOW = 240
#: Why running jobs end when the supervisor stops.
SHUTDOWN_REASON = "cancelled: the supervisor is shutting down"
_SOCKETS = ("control.sock", "events-in.sock", "events-out.sock")


class AlreadyRunning(RuntimeError):
    """Another daemon holds this home's lock."""


class Daemon:
    """The supervisor. ``await Daemon(settings).serve()`` runs until ``shutdown``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pid = os.getpid()
        self.started = time.monotonic()
        self.gpus = Gpus()
        self.scheduler = Scheduler(settings.limits, self.gpus.count, self.gpus.free_memory)
        self.executor: Executor = self._make_executor(settings)
        self.ps = Ps(self.gpus)
        #: Task records published for web's read views (``supervisor.records``).
        self.records = Records()
        self.control = Control(self, self.records)
        # Made by ``serve`` once the home is locked:
        self.store: Store
        self.events_out: EventsOut
        self.pipeline: Pipeline
        self.lifecycle: Lifecycle
        self.serving: Serving
        self._stopping = asyncio.Event()
        self._last_status = ""
        self._ready = False  # READY=1 sent: STATUS= updates may follow
        #: How late the loop ran the lag probe, last time and over the last minute or so.
        self._lags: deque[float] = deque([0.0], maxlen=LAG_WINDOW)
        self._backlog_retry: asyncio.Future[None] | None = None

    def _make_executor(self, settings: Settings) -> Executor:
        """``RFUAV_EXECUTOR``: this host (the fork server), or a Ray cluster."""
        if settings.executor == "ray":
            from supervisor.ray.executor import RayExecutor

            # A runner host's relayed events join the same pipeline as local runners'.
            return RayExecutor(
                settings,
                deliver=lambda messages: self.pipeline.ingest(messages),  # (made later, in serve)
                on_room=lambda: self.lifecycle.schedule(),
            )
        return LocalExecutor(settings)

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
        ctx = zmq.asyncio.Context()
        router, sub = self._bind(ctx)
        tasks: dict[str, TaskRecord] = {}
        self.records.attach(self.store, self.events_out.publish, tasks.get)
        self.pipeline = Pipeline(self.store, self.events_out.publish, tasks)
        self.pipeline.backlog.on_waiting = self._store_backlog
        drained = Drained()
        self.lifecycle = Lifecycle(
            self.settings,
            self.store,
            self.scheduler,
            self.pipeline,
            self.executor,
            tasks,
            on_change=self._status_changed,
            drained=drained.wait,
        )
        self.serving = Serving(
            self.settings,
            self.scheduler,
            self.pipeline,
            self.executor,
            tasks,
            self.events_out.publish,
            ctx,
            self.pipeline.save,
        )
        # The executor first: Ray's driver installs signal handlers of its own; ours win.
        self.executor.open()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.handle_signal, sig)
        loops = [
            serve_control(router, self.control),
            serve_events(sub, self.pipeline, drained),
            self.events_out.watch_subscriptions(),
            checkpoints(self.store, lambda: self.pipeline.received, self.settings.job_nice),
            self._heartbeat_loop(),
            self._lag_loop(),
            self.serving.run(),
        ]
        interval = notify.watchdog_interval()
        if interval:
            loops.append(self._watchdog_loop(interval))
        workers = [asyncio.ensure_future(c) for c in loops]
        try:
            # Deployments: the replicas a crashed supervisor left are killed before the
            # lifecycle removes leftover cgroups, and fresh ones start after it did.
            deployments = self.serving.recover(self.store.tasks_in_order(RUNNING))
            self.lifecycle.recover()
            self.serving.resume(deployments)
            log.info(
                "supervisor ready (pid %d, %s start, control %s)",
                self.pid,
                self.executor.mode,
                self.settings.addresses.control,
            )
            self._last_status = self._status_text()
            # What start-up made lives as long as the daemon, and full collections walk only
            # what is new (``protocol.collector``): no pause of tens of milliseconds between
            # two events or requests.
            collector.install()
            self._ready = True
            notify.ready(self._last_status)
            await self._stopping.wait()
            notify.stopping(f"stopping: cancelling {len(self.lifecycle.running)} running job(s)")
            await asyncio.gather(self.lifecycle.stop_jobs(SHUTDOWN_REASON), self.serving.stop())
        finally:
            collector.uninstall()
            notify.stopping("stopping")
            for w in workers + ([self._backlog_retry] if self._backlog_retry else []):
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            await self.executor.close()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            for s in (router, sub):
                s.close(linger=0)
            if not self.pipeline.store_backlog():
                log.error(
                    "%d write(s) of the supervisor's own not stored: the next start recovers their tasks from what is",
                    len(self.pipeline.backlog),
                )
            self.events_out.close()
            ctx.term()
            self.store.close()
            self.gpus.close()
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
            raise AlreadyRunning(
                f"another supervisor (pid {other}) is running with home {self.settings.home}"
            ) from None
        os.ftruncate(self._lock_fd, 0)
        os.pwrite(self._lock_fd, f"{self.pid}\n".encode(), 0)

    def _bind(self, ctx: zmq.asyncio.Context) -> tuple[Any, Any]:
        """Bind control and events-in (returned) and events-out (``self.events_out``)."""
        addr = self.settings.addresses
        for path in _SOCKETS:
            # A stale socket file from a killed daemon: binding over it is what we want.
            try:
                (self.settings.runtime_dir / path).unlink()
            except FileNotFoundError:
                pass
        # Plain sockets: ``supervisor.readers`` reads them from the loop's own reader callbacks.
        router: zmq.Socket[bytes] = zmq.Socket(ctx, zmq.ROUTER)
        router.setsockopt(zmq.MAXMSGSIZE, CONTROL_MAX_BYTES)
        router.setsockopt(zmq.ROUTER_HANDOVER, 1)
        router.bind(addr.control)
        sub: zmq.Socket[bytes] = zmq.Socket(ctx, zmq.SUB)
        sub.setsockopt(zmq.RCVHWM, EVENTS_IN_HWM)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.bind(addr.events_in)
        for s in (router, sub):
            s.setsockopt(zmq.LINGER, 0)
        self.events_out = EventsOut(ctx, addr.events_out)
        return router, sub

    def shutdown(self, reason: str) -> None:
        """Stop serving: the one path for a signal and the control command. The first call
        starts no more tasks and has ``serve`` cancel the running ones with the grace period;
        a second kills them at once."""
        if self._stopping.is_set():
            log.warning("%s again: killing running jobs now", reason)
            self.lifecycle.kill_jobs()
            return
        log.info("%s: shutting down (running jobs are cancelled, grace %.1f s)", reason, self.settings.grace_seconds)
        self.lifecycle.close()
        self._stopping.set()

    def handle_signal(self, sig: int) -> None:
        """SIGTERM/SIGINT (run by the loop, not in the signal handler): ``shutdown``."""
        self.shutdown(signal.Signals(sig).name)

    # -- loops ---------------------------------------------------------------------------
    async def _heartbeat_loop(self) -> None:
        """The records' position every ``HEARTBEAT_SECONDS``: a lost last change shows."""
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            self.records.heartbeat()

    async def _lag_loop(self) -> None:
        """Measure how late the loop runs a timer: anything blocking the loop shows here."""
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(LAG_PROBE_SECONDS)
            self._lags.append(max(0.0, loop.time() - start - LAG_PROBE_SECONDS))

    def _store_backlog(self) -> None:
        """The disk refused the supervisor's own writes: retry them until it takes them."""
        if self._backlog_retry is None or self._backlog_retry.done():
            self._backlog_retry = asyncio.ensure_future(self._backlog_loop())

    async def _backlog_loop(self) -> None:
        for delay in retry_delays():
            await asyncio.sleep(delay)
            if self.pipeline.store_backlog():
                return

    async def _watchdog_loop(self, interval: float) -> None:
        while True:
            notify.watchdog()
            await asyncio.sleep(interval)

    # -- control.Service -----------------------------------------------------------------
    def live_task(self, task_id: str) -> TaskRecord | None:
        return self.lifecycle.tasks.get(task_id)  # deployments' tasks too (the shared dict)

    def enqueue(self, tasks: list[TaskRecord]) -> None:
        self.lifecycle.enqueue(tasks)

    def cancel(self, task_id: str, reason: str) -> None:
        deployment = self.serving.by_task(task_id)
        if deployment is not None:
            self.serving.undeploy(deployment, f"undeployed: {reason}")
        else:
            self.lifecycle.cancel(task_id, reason)

    def schedule(self) -> None:
        self.lifecycle.schedule()

    def runner_views(self) -> list[dict[str, Any]]:
        views = self.ps.views(self.lifecycle.processes())
        replicas = self.serving.processes()
        for (dep, replica), view in zip(replicas, self.ps.views(_ReplicaTask.of(d, r) for d, r in replicas)):
            view.update(deployment=dep.name, replica_id=replica.replica_id, version=replica.version)
            views.append(view)
        return views

    def figures(self) -> Figures:
        return Figures(
            pid=self.pid,
            uptime=time.monotonic() - self.started,
            subscriptions=self.events_out.subscriptions,
            subscribed=self.events_out.subscribed,
            events_received=self.pipeline.received,
            events_dropped=self.pipeline.dropped,
            # The last lag measured, and the worst over the last ``LAG_WINDOW`` probes.
            loop_lag=self._lags[-1],
            loop_lag_max=max(self._lags),
            unstored=len(self.pipeline.backlog),
            unstored_why=self.pipeline.refused,
        )

    # -- systemd status ------------------------------------------------------------------
    def _status_text(self) -> str:
        return f"{self.scheduler.running_count} running, {self.scheduler.queue_length} queued"

    def _status_changed(self) -> None:
        text = self._status_text()
        if self._ready and text != self._last_status:
            self._last_status = text
            notify.status(text)


@dataclass(frozen=True)
class _ReplicaTask:
    """A replica as ``ps`` describes a runner: its deployment's task, its own start."""

    task_id: str
    task_type: str
    device: str | None
    started_at: float | None

    @staticmethod
    def of(dep: Deployment, replica: Replica) -> tuple[_ReplicaTask, JobHandle]:
        assert replica.handle is not None
        task = _ReplicaTask(dep.task.task_id, dep.task.task_type, replica.device, replica.started_at)
        return task, replica.handle


async def run(settings: Settings) -> int:
    return await Daemon(settings).serve()
