"""Deployments and their replicas (``contract/SERVING.md``, ``DESIGN.md`` "Online serving").

A deployment is a task of type ``serving`` (running while it is deployed) whose replicas are
runner processes started through the same executor as jobs (own session, cgroup limits, CUDA
device, threads; warm from the fork server), each holding a ``serving`` slot of its device.
Each slot has a keeper (``supervisor.serving.keeper``) that restarts its replica with backoff
when it dies; a slot whose replica keeps dying fails the deployment (a reload's new generation:
the reload fails, the old version keeps serving). A reload brings the next version up beside the
current one, switches the routes once it is ready, then drains the old one.

Requests never pass through here: the routing table (``routes``: each deployment's ready
replicas) is published on events-out under ``protocol.serving.ROUTES_TOPIC`` whenever it changes
(and every few seconds), and web sends requests to the replicas directly.

A deployment is stored in its task (``params``: name, device, settings, model, version,
replica pids): on a restart of the service (``recover`` then ``resume``) it comes back.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson
import zmq.asyncio

from protocol import serving as sv
from protocol.events import LOG, STATUS
from protocol.replies import CommandError, ErrorCode
from protocol.settings import Settings
from protocol.tasks import COMPLETED, FAILED, RUNNING, TaskRecord
from supervisor.executor import Executor
from supervisor.pipeline import Pipeline
from supervisor.scheduler import Scheduler
from supervisor.serving.deployment import Deployment, Generation
from supervisor.serving.keeper import Keeper
from supervisor.serving.replica import EXITED, Replica

log = logging.getLogger(__name__)

#: Seconds web gets to apply a new routing table before the replicas it no longer names drain.
ROUTE_SETTLE = 0.2
#: Seconds between two looks at the figures (the live req/s and p99).
STATS_SECONDS = 1.0
#: Seconds between two stats events of a busy deployment.
STATS_EVERY = 30.0
#: How long a shutdown waits for steps under way (an undeploy, a reload) after the replicas went.
STOP_SECONDS = 10.0
#: Seconds between two publications of an unchanged routing table (web resynchronises).
ROUTES_EVERY = 5.0


class Serving:
    """The deployments of this supervisor (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        scheduler: Scheduler,
        pipeline: Pipeline,
        executor: Executor,
        tasks: dict[str, TaskRecord],
        publish: Callable[[list[tuple[bytes, bytes]]], None],
        ctx: zmq.asyncio.Context,
        update: Callable[[TaskRecord], None],
    ) -> None:
        self._settings = settings
        self._scheduler = scheduler
        self._pipeline = pipeline
        self._executor = executor
        self._tasks = tasks
        self._publish = publish
        self._ctx = ctx
        self._update = update
        self.deployments: dict[str, Deployment] = {}
        self._by_task: dict[str, Deployment] = {}
        self._keeper = Keeper(settings, executor, scheduler, ctx, self)
        self._background: set[asyncio.Task[Any]] = set()
        self.closing = False

    # -- views ---------------------------------------------------------------------------
    def get(self, name: str) -> Deployment:
        dep = self.deployments.get(name)
        if dep is None:
            raise CommandError(ErrorCode.NOT_FOUND, f"deployment {name!r} not found")
        return dep

    def by_task(self, task_id: str) -> Deployment | None:
        return self._by_task.get(task_id)

    def routes(self) -> dict[str, Any]:
        return {d.name: d.route() for d in self.deployments.values() if d.status in (sv.READY, sv.RELOADING)}

    def publish_routes(self) -> None:
        self._publish([(sv.ROUTES_TOPIC, orjson.dumps(self.routes()))])

    def processes(self) -> list[tuple[Deployment, Replica]]:
        out: list[tuple[Deployment, Replica]] = []
        for dep in self.deployments.values():
            for gen in (dep.current, dep.incoming, *dep.draining):
                if gen is not None:
                    out.extend((dep, r) for r in gen.replicas() if r.handle is not None and r.state != EXITED)
        return out

    # -- deploy --------------------------------------------------------------------------
    def create(
        self,
        task: TaskRecord,
        name: str,
        device: str,
        model: sv.ModelInfo,
        cfg: sv.ServingSettings,
        *,
        warning: str | None = None,
    ) -> None:
        """Start a deployment whose task was just stored (``control``: checked, room found)."""
        gen = Generation.new(1, model, cfg)
        dep = Deployment(name, task, device, gen)
        old = self.deployments.get(name)
        if old is not None:  # a failed one of that name: replaced
            self._by_task.pop(old.task.task_id, None)
        self.deployments[name] = dep
        self._by_task[task.task_id] = dep
        self._tasks[task.task_id] = task
        if warning:
            self.emit(dep, LOG, warning, "WARNING")
        self._save(dep, f"deploying {model.model} ({model.num_classes} classes) on {device}: {cfg.replicas} replica(s)")
        self._spawn(self._bring_up(dep, gen))

    def reload(self, dep: Deployment, model: sv.ModelInfo, cfg: sv.ServingSettings) -> None:
        """Bring up the next version beside the current one; switch once it is ready."""
        if dep.incoming is not None:
            raise CommandError(ErrorCode.CONFLICT, f"deployment {dep.name!r} is already reloading")
        gen = Generation.new(dep.version + 1, model, cfg)
        dep.incoming = gen
        dep.status = sv.RELOADING
        self._save(dep, f"reloading: version {gen.version} starting ({cfg.replicas} replica(s), {model.weight_path})")
        self._spawn(self._bring_up(dep, gen))

    def undeploy(self, dep: Deployment, message: str = "undeployed") -> None:
        """Stop taking requests (routes first), drain the replicas, end the task completed."""
        if self.deployments.get(dep.name) is dep:
            del self.deployments[dep.name]
        if dep.task.status != RUNNING:
            self._by_task.pop(dep.task.task_id, None)
            return
        dep.status = sv.STOPPED
        self.publish_routes()
        self.emit(dep, LOG, f"{message}: draining {len(dep.current.replicas())} replica(s)")
        self._spawn(self._stop_all_of(dep, COMPLETED, message))

    # -- a generation's life -------------------------------------------------------------
    async def _bring_up(self, dep: Deployment, gen: Generation) -> None:
        gen.keepers = [asyncio.ensure_future(self._keeper.keep(dep, gen, i)) for i in range(len(gen.slots))]
        while not gen.all_ready() and gen.failed is None and not gen.stopping:
            gen.changed.clear()
            await gen.changed.wait()
        if gen.stopping:
            return
        if gen.failed is not None:
            await self._generation_failed(dep, gen)
            return
        ms = [r.status.prepared for r in gen.ready() if r.status is not None]
        if gen is dep.current:
            dep.status = sv.READY
            self._save(dep, f"ready: version {gen.version}, {len(gen.slots)} replica(s) ({ms[0] if ms else ''})")
            self.publish_routes()
            return
        # A reload: switch, then drain the old version.
        old, dep.current, dep.incoming = dep.current, gen, None
        dep.earlier_restarts += sum(old.restarts)
        dep.status = sv.READY
        self._save(dep, f"reloaded: version {gen.version} serving, version {old.version} draining")
        self.publish_routes()
        dep.draining.append(old)
        await asyncio.sleep(ROUTE_SETTLE)
        await self._keeper.stop_generation(dep, old)
        dep.draining.remove(old)

    async def _generation_failed(self, dep: Deployment, gen: Generation) -> None:
        reason = gen.failed or "replicas failed"
        await self._keeper.stop_generation(dep, gen)
        if gen is dep.incoming:
            dep.incoming = None
            dep.status = sv.READY if dep.current.all_ready() else sv.LOADING
            self._save(dep, f"reload to version {gen.version} failed: {reason}; version {dep.version} keeps serving",
                       "ERROR")  # fmt: skip
            return
        dep.status = sv.FAILED
        dep.reason = reason
        self.publish_routes()
        await self._stop_all_of(dep, FAILED, f"replicas keep failing: {reason}")

    async def _stop_all_of(self, dep: Deployment, status: str, message: str) -> None:
        for gen in (dep.incoming, dep.current, *dep.draining):
            if gen is not None:
                await self._keeper.stop_generation(dep, gen)
        self._finish(dep, status, message)

    def _finish(self, dep: Deployment, status: str, message: str) -> None:
        task = dep.task
        task.status, task.message, task.finished_at = status, message, time.time()
        task.result = dep.view()
        level = "ERROR" if status == FAILED else "INFO"
        self._pipeline.emit(task, STATUS, message, level, status=status)
        self._tasks.pop(task.task_id, None)
        if status != FAILED:
            self._by_task.pop(task.task_id, None)

    # -- figures, recovery, shutdown ----------------------------------------------------
    async def run(self) -> None:
        """Until cancelled: record each deployment's figures, republish the routes now and
        then (web resynchronises), and say how a busy deployment is doing in its stream."""
        last_routes = last_stats = time.monotonic()
        said: dict[str, int] = {}
        while True:
            await asyncio.sleep(STATS_SECONDS)
            now = time.monotonic()
            for dep in self.deployments.values():
                dep.record()
            if now - last_routes >= ROUTES_EVERY:
                last_routes = now
                self.publish_routes()
            if now - last_stats >= STATS_EVERY:
                last_stats = now
                for dep in list(self.deployments.values()):
                    stats = dep.stats()
                    if dep.task.status == RUNNING and stats["requests"] != said.get(dep.name):
                        said[dep.name] = stats["requests"]
                        p99 = "-" if stats["p99_ms"] is None else f"{stats['p99_ms']:g} ms"
                        self._save(dep, f"stats: {stats['requests']} requests, {stats['requests_per_s']:g} req/s, "
                                   f"p99 {p99}, mean batch {stats['mean_batch_size']:g}")  # fmt: skip

    def recover(self, running: list[TaskRecord]) -> list[TaskRecord]:
        """The serving tasks among ``running`` (stored as running by a previous supervisor):
        kill the replicas it left (a crash leaves them serving stale routes), return the tasks
        for ``resume``. Blocks (kills and cgroup removal): at start, before anything is served."""
        out = []
        for task in running:
            if task.task_type != sv.TASK_TYPE:
                continue
            out.append(task)
            for rec in task.params.get("replicas", []):
                stale = dataclasses.replace(
                    task, task_id=str(rec.get("id")), pid=rec.get("pid"), pid_started=rec.get("pid_started"),
                    cgroup=orjson.dumps(rec["cgroup"]).decode() if rec.get("cgroup") else None,
                )  # fmt: skip
                handle = self._executor.adopt(stale)
                if handle is not None:
                    log.warning("deployment task %s: killing replica pid %d left by the previous supervisor",
                                task.task_id, handle.pid)  # fmt: skip
                    handle.kill()
                    try:
                        handle.cleanup()
                    except OSError as exc:
                        log.warning("replica %s: cgroup cleanup failed: %s", stale.task_id, exc)
        return out

    def resume(self, tasks: list[TaskRecord]) -> None:
        """Bring back the deployments of ``tasks`` (``recover``) with fresh replicas."""
        for task in tasks:
            p = task.params
            try:
                model = sv.ModelInfo(**p["model"])
                cfg = sv.ServingSettings(**p["settings"])
                name, device, version = str(p["name"]), str(p["device"]), int(p["version"])
            except (KeyError, TypeError, ValueError) as exc:
                self._tasks[task.task_id] = task
                task.status, task.message, task.finished_at = FAILED, f"cannot resume: {exc!r}", time.time()
                self._pipeline.emit(task, STATUS, task.message, "ERROR", status=FAILED)
                self._tasks.pop(task.task_id, None)
                continue
            gen = Generation.new(version, model, cfg)
            dep = Deployment(name, task, device, gen)
            self.deployments[name] = dep
            self._by_task[task.task_id] = dep
            self._tasks[task.task_id] = task
            self._save(dep, f"resumed after a restart of the supervisor: version {version}, {cfg.replicas} replica(s)")
            self._spawn(self._bring_up(dep, gen))

    async def stop(self) -> None:
        """Shutdown: drain every replica; deployments stay stored (``resume`` brings them back).
        Steps under way (an undeploy draining, a reload) end with their replicas: awaited too."""
        self.closing = True
        deps = list(self.deployments.values())
        for dep in deps:
            dep.status = sv.STOPPED
        self.publish_routes()
        generations = [(d, g) for d in deps for g in (d.incoming, d.current, *d.draining) if g is not None]
        await asyncio.gather(*(self._keeper.stop_generation(d, g) for d, g in generations))
        if self._background:
            _, pending = await asyncio.wait(self._background, timeout=STOP_SECONDS)
            for t in pending:
                log.error("serving: a step did not end at shutdown: %r", t)
                t.cancel()

    # -- bookkeeping ---------------------------------------------------------------------
    def emit(self, dep: Deployment, kind: str, message: str, level: str = "INFO") -> None:
        if dep.task.status == RUNNING:
            self._pipeline.emit(dep.task, kind, message, level, serving=dep.view())

    def _save(self, dep: Deployment, message: str, level: str = "INFO") -> None:
        """The deployment into its task (message, ``res``, stored params) and an event."""
        dep.task.message = message
        self._store_params(dep)
        self.emit(dep, LOG, message, level)

    def save_replicas(self, dep: Deployment) -> None:
        self._store_params(dep)
        if dep.task.status == RUNNING:
            self._update(dep.task)

    def _store_params(self, dep: Deployment) -> None:
        gen = dep.current
        recorded = [
            {"id": r.replica_id, "pid": r.handle.pid, "pid_started": r.handle.create_time, "cgroup": r.handle.cgroup}
            for _, r in self.processes_of(dep)
            if r.handle is not None
        ]
        dep.task.params = {
            "name": dep.name, "device": dep.device, "version": gen.version,
            "model": dataclasses.asdict(gen.model), "settings": dataclasses.asdict(gen.settings),
            "replicas": recorded,
        }  # fmt: skip
        dep.task.result = dep.view()

    def processes_of(self, dep: Deployment) -> list[tuple[Deployment, Replica]]:
        return [(d, r) for d, r in self.processes() if d is dep]

    def _spawn(self, coro: Any) -> None:
        t = asyncio.ensure_future(coro)
        self._background.add(t)
        t.add_done_callback(self._done)

    def _done(self, t: asyncio.Task[Any]) -> None:
        self._background.discard(t)
        if not t.cancelled() and t.exception() is not None:
            log.error("serving: background step failed", exc_info=t.exception())
