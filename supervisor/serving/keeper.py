"""Keeping a generation's replicas alive: each slot's keeper starts its replica through the
executor (a ``serving`` slot held on its device), probes it until it answers (ready), then every
``PROBE_SECONDS`` for its figures, and restarts it with backoff when it dies; ``stop_generation``
drains a generation (SIGTERM, the grace period, SIGKILL). What a keeper has to say goes through
``Hooks`` (the deployment's stream, its stored record, the routing table).

Where a replica listens: an IPC address in the runtime directory, except with the Ray executor
and ``RFUAV_RAY_EVENTS=tcp`` (a port may be opened between nodes), where a replica may run on any
node: it binds TCP on its node (``protocol.serving.TCP_ON_NODE``) as a CURVE server. Its keys
(``tcp_keys``) are made here, per replica: its own keypair (the secret goes into its spec only,
written 0600) and one client keypair, the only one it lets in. The client keypair travels in the
routing table (``Replica.route``: ``curve``) rather than in a key file of the runtime directory
shared by web and the supervisor, because: the table only ever goes over the supervisor's IPC
sockets (events-out, the ``routes`` answer on control), in the same 0700 runtime directory such
a file would be in, so it is no wider exposure; web needs no setting or file to find, and loads
nothing when a table changes; a key opens one replica and dies with it (a leaked one is worth
nothing once its replica is gone, with no rotation to run); and old web processes keep working
(an entry without ``curve`` is IPC, as before).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Protocol

import zmq
import zmq.asyncio

from protocol import serving as sv
from protocol.events import LOG
from protocol.jobs import JobSpec
from protocol.settings import Settings
from supervisor import jobs
from supervisor.executor import Executor, release
from supervisor.job_cgroup import JobLimits
from supervisor.scheduler import Scheduler
from supervisor.serving.deployment import Deployment, Generation
from supervisor.serving.replica import DRAINING, EXITED, READY, Replica

log = logging.getLogger(__name__)

#: Seconds between two probes of a ready replica (figures); a starting one is probed faster.
PROBE_SECONDS = 1.0
STARTING_PROBE_SECONDS = 0.1
#: A slot whose replica dies this many times in a row fails (a replica ready for
#: ``STABLE_SECONDS`` starts a new streak).
MAX_STREAK = 5
STABLE_SECONDS = 60.0
#: Backoff before restart n of a streak: ``BACKOFF * 2**(n-1)``, at most ``MAX_BACKOFF``.
BACKOFF = 0.25
MAX_BACKOFF = 10.0
#: Beyond the grace period, how long ``stop_generation`` waits for the kills to land.
KILL_SECONDS = 30.0


class Hooks(Protocol):
    def emit(self, dep: Deployment, kind: str, message: str, level: str = "INFO") -> None:
        """An event in the deployment's stream."""

    def save_replicas(self, dep: Deployment) -> None:
        """Store the deployment's replica processes (a restart kills what a crash left)."""

    def publish_routes(self) -> None:
        """The routing table changed."""


class Keeper:
    """Starts, watches, restarts and stops replicas (see the module docstring)."""

    def __init__(
        self, settings: Settings, executor: Executor, scheduler: Scheduler, ctx: zmq.asyncio.Context, hooks: Hooks
    ) -> None:
        self._settings = settings
        self._executor = executor
        self._scheduler = scheduler
        self._ctx = ctx
        self._hooks = hooks
        self._limits = JobLimits(settings.job_memory_mb, settings.job_cpus, settings.job_pids)
        self._counter = 0
        #: Replicas bind TCP on their Ray node (see the module docstring).
        self._tcp = settings.executor == "ray" and settings.ray_events == "tcp"

    async def keep(self, dep: Deployment, gen: Generation, slot: int) -> None:
        """Slot ``slot`` of ``gen``: start its replica, watch it, restart it while it dies."""
        streak = 0
        while not gen.stopping:
            replica, why = await self._start(dep, gen, slot)
            if replica is not None:
                if gen.stopping:  # stopped while it started: it drains at once
                    _drain(replica)
                await self._watch(dep, gen, replica)
                dep.retire(replica)
                self._scheduler.release(replica.replica_id)
                if gen.stopping:
                    return
                stable = replica.ready_at is not None and time.time() - replica.ready_at >= STABLE_SECONDS
                streak = 1 if stable else streak + 1
                reason = replica.failure()
            else:
                streak += 1
                reason = why
            gen.restarts[slot] += 1
            self._hooks.save_replicas(dep)
            if streak >= MAX_STREAK:
                gen.failed = f"replica {slot} failed {streak} times in a row, last: {reason}"
                gen.changed.set()
                return
            delay = min(MAX_BACKOFF, BACKOFF * 2 ** (streak - 1))
            self._hooks.emit(dep, LOG, f"replica {slot} (version {gen.version}) ended: {reason}; restarting in {delay:g} s "
                       f"(restart {gen.restarts[slot]})", "WARNING")  # fmt: skip
            gen.changed.set()
            await asyncio.sleep(delay)

    async def _start(self, dep: Deployment, gen: Generation, slot: int) -> tuple[Replica | None, str]:
        """The replica of ``slot`` started, or None and why not."""
        self._counter += 1
        # Unique across supervisor restarts too (a new instance resumes the same version).
        replica_id = f"{dep.task.task_id}.v{gen.version}.r{slot}.{os.getpid()}-{self._counter}"
        task_dir = Path(str(dep.task.task_dir)) / "replicas" / replica_id
        if self._tcp:
            curve, server_secret = tcp_keys()
            replica = Replica(replica_id, gen.version, "", dep.device, task_dir, curve=curve)
        else:
            server_secret = ""
            address = self._settings.addresses.replica(replica_id)
            replica = Replica(replica_id, gen.version, address, dep.device, task_dir)
        gen.slots[slot] = replica
        self._scheduler.occupy(replica_id, sv.TASK_TYPE, dep.device)
        try:
            task_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            replica.handle = await self._executor.start(self._spec(dep, gen, replica, server_secret), self._limits)
        except Exception as exc:
            log.exception("deployment %s: could not start replica %s", dep.name, replica_id)
            self._scheduler.release(replica_id)
            replica.state = EXITED
            replica.exited.set()
            return None, f"could not start a replica: {type(exc).__name__}: {exc}"
        self._hooks.save_replicas(dep)
        return replica, ""

    def _spec(self, dep: Deployment, gen: Generation, replica: Replica, server_secret: str) -> JobSpec:
        cfg, model = gen.settings, gen.model
        curve = replica.curve
        params = sv.ReplicaParams(
            name=dep.name, version=gen.version, address=sv.TCP_ON_NODE if curve else replica.address,
            curve_secret_key=server_secret, curve_client_key=curve.public if curve else "", cfg_path=model.cfg_path,
            weight_path=model.weight_path, max_batch_size=cfg.max_batch_size,
            max_batch_delay_ms=cfg.max_batch_delay_ms, max_queue=max(1, -(-cfg.max_queue // cfg.replicas)),
            cache_size=cfg.cache_size, top_k=min(cfg.top_k, model.num_classes),
            max_image_pixels=self._settings.serving_max_pixels, drain_seconds=self._settings.grace_seconds,
        )  # fmt: skip
        on_gpu = dep.device.startswith("cuda:")
        return JobSpec(
            task_id=replica.replica_id,
            task_type=sv.TASK_TYPE,
            job=sv.JOB,
            params=dataclasses.asdict(params),
            device="cuda:0" if on_gpu else "cpu",
            host_device=dep.device,
            task_dir=str(replica.task_dir),
            events_endpoint=self._settings.addresses.events_in,
            cuda_visible_devices=dep.device[5:] if on_gpu else "",
            torch_threads=cfg.threads,
            interop_threads=1,
            opencv_threads=1,
            config=jobs.job_config(self._settings),
            grace_seconds=self._settings.grace_seconds,
        )

    async def _watch(self, dep: Deployment, gen: Generation, replica: Replica) -> None:
        """Probe ``replica`` until it exits (ready on its first answer)."""
        assert replica.handle is not None
        waiter = asyncio.ensure_future(replica.handle.wait())
        try:
            while not waiter.done():
                status = await replica.probe(self._ctx)
                if status is not None and replica.state not in (READY, DRAINING):
                    replica.state = READY
                    replica.ready_at = time.time()
                    self._hooks.emit(
                        dep, LOG, f"replica {replica.replica_id} ready (pid {replica.pid}, {status.prepared})"
                    )
                    gen.changed.set()
                    if gen is dep.current and dep.status in (sv.READY, sv.RELOADING):
                        self._hooks.publish_routes()
                pause = PROBE_SECONDS if replica.state == READY else STARTING_PROBE_SECONDS
                await asyncio.wait([waiter], timeout=pause)
            replica.exit = waiter.result()
        except Exception as exc:  # noqa: BLE001 - a lost handle is a dead replica
            log.warning("replica %s: wait failed: %s", replica.replica_id, exc)
        finally:
            was_ready = replica.state == READY
            replica.state = EXITED
            replica.exited.set()
            replica.close_probe()
            if replica.handle is not None:
                await asyncio.to_thread(release, replica.handle, f"replica {replica.replica_id}")
            if was_ready and gen is dep.current and dep.status in (sv.READY, sv.RELOADING):
                self._hooks.publish_routes()

    async def stop_generation(self, dep: Deployment, gen: Generation) -> None:
        """SIGTERM every replica of ``gen`` (they drain), SIGKILL what is left after the grace
        period; returns once every keeper of ``gen`` ended (a replica still starting is stopped
        by its keeper as soon as it exists)."""
        gen.stopping = True
        gen.changed.set()
        for r in gen.replicas():
            _drain(r)
        keepers = [k for k in gen.keepers if not k.done()]
        if not keepers:
            return
        _, pending = await asyncio.wait(keepers, timeout=self._settings.grace_seconds)
        if not pending:
            return
        for r in gen.replicas():
            if r.handle is not None and not r.exited.is_set():
                self._hooks.emit(dep, LOG, f"replica {r.replica_id} did not drain in time: killing it", "WARNING")
                r.handle.kill()
        _, pending = await asyncio.wait(pending, timeout=KILL_SECONDS)
        if pending:
            log.error("deployment %s: %d replica keeper(s) did not end after the kill", dep.name, len(pending))


def tcp_keys() -> tuple[sv.ReplicaCurve, str]:
    """A TCP replica's keys: what its clients need (its public key, the client keypair it lets
    in) and its own secret key (for its spec only). Z85."""
    server_public, server_secret = zmq.curve_keypair()
    client_public, client_secret = zmq.curve_keypair()
    curve = sv.ReplicaCurve(server_public.decode(), client_public.decode(), client_secret.decode())
    return curve, server_secret.decode()


def _drain(replica: Replica) -> None:
    """Ask a replica to drain and exit (SIGTERM), once."""
    if replica.handle is not None and replica.state not in (DRAINING, EXITED):
        replica.state = DRAINING
        replica.handle.terminate()
