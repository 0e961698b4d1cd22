"""``RayExecutor``: jobs on a Ray cluster through the executor seam (``supervisor.executor``).

``RFUAV_EXECUTOR=ray``. The queue, the limits, the store, the events and the HTTP contract stay
the supervisor's; Ray places processes. Each started job gets a detached actor named by its task
id (``supervisor.ray.host.RunnerHost``, namespace ``rfuav-<instance>``) that asks Ray for the
job's resources (CPUs from ``RFUAV_JOB_CPUS``, at least one; one GPU for ``cuda``; the job's
memory limit) and starts the unchanged runner on its node. The lifecycle drives it exactly as a
local job: ``terminate`` → grace → ``kill``; ``wait``; ``alive_pids``/``kill``/``cleanup`` (the
actor goes once its job's processes are verified gone).

- ``RFUAV_RAY_ADDRESS`` empty: the supervisor starts a local Ray instance of its own and shuts
  it down when it stops; otherwise it connects to that cluster and leaves it running (detached
  hosts carry on; a restarted supervisor adopts them by name). The owned instance has no
  dashboard UI (Ray still starts its API server and dashboard agent, in their minimal mode), and
  every process of it listens on loopback only: ``ray.init`` turns a loopback
  ``_node_ip_address`` into the host's outward address (its GCS, raylet, workers and agents then
  listen on all interfaces) unless Ray believes it runs on one machine only, which its
  ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` says (``_loopback_only``); the node address is checked
  after the start.
- Admission (``admit``): a task is placed only when Ray's view of the available resources, less
  what jobs being started hold, covers it, on one node (``RFUAV_RAY_ADMISSION=free``); with
  ``ray`` whenever our own limits allow, so that it may wait inside Ray (an autoscaler sees it).
- A task cancelled while its start waits (its host not placed yet, or not done starting the
  runner): ``abort`` cancels the host's ``start`` call — Ray drops it while the actor is pending;
  a host already in it kills what it started — then the host actor is removed and its name
  checked free; ``start`` raises ``StartAborted``.
- A runner host that dies (its node lost, or killed) ends ``wait`` with ``RunnerLost`` and the
  reason: the task fails with it.
- Events (``RFUAV_RAY_EVENTS``): ``relay`` through each host (``RayHandle._relay``), ``direct``
  to the supervisor's IPC socket (one machine), ``tcp`` to ``RFUAV_EVENTS_TCP`` with CURVE keys
  (``supervisor.ray.events_tcp``: a keypair per job, made in ``start``, let in again by
  ``adopt`` from the job's spec, forgotten once the job's end was dealt with).
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import math
import os
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from protocol.jobs import JobSpec
from protocol.settings import Settings
from protocol.tasks import TaskRecord
from supervisor.cgroups import instance_key
from supervisor.executor import StartAborted
from supervisor.job_cgroup import JobLimits
from supervisor.ray.events_tcp import EventsTcp
from supervisor.ray.handle import CALL_TIMEOUT, Deliver, RayHandle, lost, remove_and_confirm

log = logging.getLogger(__name__)

#: Seconds between two looks at the cluster's available resources.
RESOURCES_EVERY = 0.5
#: Seconds an admitted job's resources count as held before Ray's view must show them.
HOLD_SECONDS = 2.0
#: Seconds a restarted supervisor gives a runner host to finish starting its runner.
ADOPT_WAIT = 5.0

#: Ray's switch between "one machine only" (node address: loopback) and a cluster (node address:
#: the host's outward one, whatever ``_node_ip_address`` says); read by every Ray process.
SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _loopback_only() -> None:
    """Make the Ray instance this process starts keep to loopback: the variable for the processes
    Ray starts (and for ``ray`` imported after this), the constant for a ``ray`` already imported
    (read at call time by ``services.get_node_ip_address``)."""
    os.environ[SINGLE_MACHINE_ENV] = "0"
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


def namespace(settings: Settings) -> str:
    return f"rfuav-{instance_key(settings.home)}"


@dataclasses.dataclass(eq=False)
class _Starting:
    """A start under way: whether it was aborted, and the host's ``start`` call once made."""

    aborted: bool = False
    call: Any = None


class RayExecutor:
    """An ``Executor`` over Ray (see the module docstring)."""

    def __init__(self, settings: Settings, deliver: Deliver, on_room: Callable[[], Any] = lambda: None) -> None:
        """``deliver``: relayed event messages into the pipeline; ``on_room``: the cluster's
        view changed (the queue may move)."""
        self._settings = settings
        self._deliver = deliver
        self._on_room = on_room
        self._relay = settings.ray_events == "relay"
        #: ``RFUAV_RAY_EVENTS=tcp``: runners connect here with CURVE keys of their own.
        self._tcp = (
            EventsTcp(settings.events_tcp, settings.runtime_dir, deliver) if settings.ray_events == "tcp" else None
        )
        self.namespace = namespace(settings)
        self._ready: asyncio.Future[None] | None = None
        self._owned = not settings.ray_address
        #: Available resources per node (Ray's view, refreshed), and what starting jobs hold.
        self._available: list[dict[str, float]] = []
        #: ``(resources, when)`` of jobs admitted: held until a view read after ``when`` + the
        #: time a host takes to start shows them (``HOLD_SECONDS``).
        self._held: list[tuple[dict[str, float], float]] = []
        self._watcher: asyncio.Task[None] | None = None
        self.cluster: dict[str, Any] = {}
        #: Starts under way, by task id; and tasks aborted before their start began.
        self._starting: dict[str, _Starting] = {}
        self._aborted_early: set[str] = set()

    @property
    def mode(self) -> str:
        return "ray"

    def describe(self) -> dict[str, Any]:
        return {
            "executor": "ray",
            "address": self._settings.ray_address or "local instance (owned)",
            "events": self._settings.ray_events,
            "connected": self._ready is not None and self._ready.done() and self._ready.exception() is None,
            "cluster": self.cluster,
            **({"events_tcp": self._tcp.describe()} if self._tcp is not None else {}),
        }

    # -- life ------------------------------------------------------------------------------
    def open(self) -> None:
        """Start or connect to Ray now (a few seconds, before anything is served: adopting a
        task after a restart needs the cluster), then watch its resources."""
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        try:
            if self._tcp is not None:
                self._tcp.open()
            self._connect()
        except Exception as exc:
            self._ready.set_exception(exc)
            self._ready.exception()  # said here; ``start`` raises it for each task
            log.error("ray: could not %s: %s", "start" if self._owned else "connect", exc)
            return
        self._ready.set_result(None)
        self._watcher = asyncio.ensure_future(self._watch_resources())

    def _connect(self) -> None:
        if self._owned:
            _loopback_only()
        import ray

        kwargs: dict[str, Any] = {"namespace": self.namespace, "log_to_driver": False, "configure_logging": False}
        if self._owned:
            # "local": a new instance of ours, never one found through RAY_ADDRESS or a file.
            kwargs.update(address="local", include_dashboard=False, _node_ip_address="127.0.0.1")
        else:
            kwargs["address"] = self._settings.ray_address
        started = time.monotonic()
        ray.init(**kwargs)
        if self._owned:
            node_ip = ray.util.get_node_ip_address()
            if not ipaddress.ip_address(node_ip).is_loopback:
                ray.shutdown()
                raise RuntimeError(f"the local Ray instance took node address {node_ip}, not loopback: stopped it")
        self._refresh()
        log.info(
            "ray: %s %s in %.1f s; cluster %s",
            "started a local instance" if self._owned else "connected to",
            "" if self._owned else self._settings.ray_address,
            time.monotonic() - started,
            self.cluster.get("total"),
        )

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        if self._tcp is not None and self._tcp.endpoint:
            await self._tcp.close()
        if self._ready is None or not self._ready.done() or self._ready.exception() is not None:
            return
        import ray

        # A local instance of ours goes with us; a cluster's detached hosts carry on (adopted
        # by the next supervisor).
        await asyncio.to_thread(ray.shutdown)

    # -- resources -------------------------------------------------------------------------
    async def _watch_resources(self) -> None:
        while True:
            before = (self._available, len(self._held))
            try:
                await asyncio.to_thread(self._refresh)
            except Exception as exc:  # noqa: BLE001 - keep the last view
                log.warning("ray: resources not read: %s", exc)
            if (self._available, len(self._held)) != before:
                self._on_room()  # room may have appeared: the queue looks again
            await asyncio.sleep(RESOURCES_EVERY)

    def _refresh(self) -> None:
        import ray
        from ray._private.state import state

        began = time.monotonic()
        per_node = state.available_resources_per_node()
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        self._available = [dict(v) for v in per_node.values()]
        self._held = [(need, when) for need, when in self._held if when + HOLD_SECONDS > began]
        self.cluster = {
            "nodes": len(nodes),
            "total": {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU", "memory")},
            "available": {k: v for k, v in ray.available_resources().items() if k in ("CPU", "GPU", "memory")},
        }

    def requirements(self, host_device: str, limits: JobLimits) -> dict[str, float]:
        need = {"CPU": float(max(1, math.ceil(limits.cpus)) if limits.cpus else 1)}
        if host_device.startswith("cuda"):
            need["GPU"] = 1.0
        if limits.memory_mb:
            need["memory"] = float(limits.memory_mb << 20)
        return need

    def admit(self, device: str, limits: JobLimits) -> bool:
        """Whether one node's available resources, less what jobs admitted since Ray's view was
        read hold, cover a job; if so the job holds its share until the view shows its host.
        Always with ``RFUAV_RAY_ADMISSION=ray`` (the job may then wait inside Ray)."""
        if self._settings.ray_admission == "ray":
            return True
        if self._ready is not None and self._ready.done() and self._ready.exception() is not None:
            return True  # Ray could not be started or reached: ``start`` fails the task with why
        need = self.requirements(device, limits)
        held: dict[str, float] = {}
        for h, _ in self._held:
            for k, v in h.items():
                held[k] = held.get(k, 0.0) + v
        for node in self._available:
            if all(node.get(k, 0.0) - held.get(k, 0.0) >= v for k, v in need.items()):
                self._held.append((need, time.monotonic()))
                return True
        return False

    # -- jobs ------------------------------------------------------------------------------
    def abort(self, task_id: str) -> None:
        """End the start of ``task_id`` under way (see the module docstring); one not begun yet
        ends as soon as it begins."""
        attempt = self._starting.get(task_id)
        if attempt is None:
            self._aborted_early.add(task_id)
            return
        attempt.aborted = True
        if attempt.call is not None:
            import ray

            try:
                ray.cancel(attempt.call)  # not forced: a host in ``start`` kills what it started
            except Exception as exc:  # noqa: BLE001 - it ended meanwhile: start() goes on
                log.debug("task %s: cancelling the host's start: %s", task_id, exc)

    async def start(self, spec: JobSpec, limits: JobLimits) -> RayHandle:
        attempt = self._starting[spec.task_id] = _Starting(aborted=spec.task_id in self._aborted_early)
        self._aborted_early.discard(spec.task_id)
        try:
            return await self._start(spec, limits, attempt)
        except BaseException:
            if self._tcp is not None:
                self._tcp.forget(spec.task_id)
            raise
        finally:
            self._starting.pop(spec.task_id, None)

    async def _start(self, spec: JobSpec, limits: JobLimits, attempt: _Starting) -> RayHandle:
        if self._ready is not None:
            await self._ready
        if attempt.aborted:
            raise StartAborted("cancelled before its runner host was created")
        import ray

        from supervisor.ray.host import RunnerHost

        need = self.requirements(spec.host_device, limits)
        if self._tcp is not None:
            keys = self._tcp.admit(spec.task_id)
            spec = dataclasses.replace(
                spec, events_endpoint=self._tcp.endpoint, events_server_key=keys.server_public,
                events_public_key=keys.public, events_secret_key=keys.secret,
            )  # fmt: skip
        try:
            options: dict[str, Any] = {
                "name": spec.task_id, "namespace": self.namespace, "lifetime": "detached",
                "num_cpus": need["CPU"], "num_gpus": need.get("GPU", 0), "max_concurrency": 64,
                "max_restarts": 0,
            }  # fmt: skip
            if "memory" in need:
                options["memory"] = need["memory"]
            actor = ray.remote(RunnerHost).options(**options).remote(str(self._settings.home), self._relay)
            attempt.call = actor.start.remote(spec.dump(), dataclasses.asdict(limits))
            try:
                info = await attempt.call
            except Exception as exc:
                if not attempt.aborted:
                    raise
                # Cancelled: Ray dropped the call (the host was not placed yet, or not started
                # on it), or the host stopped and removed what it had started. Either way no
                # process of the job is left: the host goes, and its name must be free.
                gone = await asyncio.to_thread(remove_and_confirm, actor, spec.task_id, self.namespace)
                if not gone:
                    log.error("task %s: its runner host is still known to Ray after the kill", spec.task_id)
                if isinstance(exc, ray.exceptions.RayTaskError):  # the host had the call: it stopped its runner
                    raise StartAborted("while its runner host was starting it; what it started is stopped") from None
                raise StartAborted("before Ray placed its runner host; host removed") from None
        except StartAborted:
            raise
        except ray.exceptions.RayTaskError as exc:  # the host refused (e.g. paths its node cannot see)
            cause = exc.cause if isinstance(exc.cause, BaseException) else exc
            await asyncio.to_thread(remove_and_confirm, actor, spec.task_id, self.namespace)
            raise RuntimeError(f"on Ray node: {type(cause).__name__}: {cause}") from None
        except Exception as exc:
            raise lost(exc, spec.task_id) from None
        return RayHandle(
            spec.task_id, actor, info, self._deliver if self._relay else None, self._forgetter(spec.task_id)
        )

    def adopt(self, task: TaskRecord) -> RayHandle | None:
        """The live runner host of ``task`` (by name) and its runner, if it is the recorded one
        (or none was recorded yet: the supervisor died while the host was starting it)."""
        import ray

        try:
            actor = ray.get_actor(task.task_id, namespace=self.namespace)
            deadline = time.monotonic() + ADOPT_WAIT
            # A host still starting its runner (the previous supervisor died meanwhile) says so
            # soon; one whose start never reached it (the supervisor died first) never does.
            while (info := ray.get(actor.describe.remote(), timeout=CALL_TIMEOUT)) is None:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            pids: list[int] = ray.get(actor.alive_pids.remote(), timeout=CALL_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - no such host (any more)
            log.info("task %s: no runner host to adopt: %s", task.task_id, exc)
            return None
        if not isinstance(info, dict) or info["pid"] not in pids or task.pid not in (None, info["pid"]):
            return None
        if self._tcp is not None and task.task_dir:
            # Its runner reconnects with the key its spec holds: let that key in again.
            try:
                spec = JobSpec.load((Path(task.task_dir) / "spec.json").read_bytes())
            except (OSError, ValueError) as exc:
                log.warning("task %s: its spec is unreadable, its events arrive by the journal: %s", task.task_id, exc)
            else:
                self._tcp.allow(task.task_id, spec.events_public_key)
        forget = self._forgetter(task.task_id)
        return RayHandle(task.task_id, actor, info, self._deliver if self._relay else None, forget)

    def _forgetter(self, task_id: str) -> Callable[[], None]:
        tcp = self._tcp
        return (lambda: tcp.forget(task_id)) if tcp is not None else (lambda: None)

    def remove_leftovers(self, keep: Collection[str]) -> None:
        """Runner hosts of this instance that no adopted task uses: their jobs are killed and
        verified gone, then the hosts removed."""
        import ray
        from ray.util import list_named_actors

        for entry in list_named_actors(all_namespaces=True):
            if entry.get("namespace") != self.namespace or entry.get("name") in keep:
                continue
            name = str(entry["name"])
            try:
                actor = ray.get_actor(name, namespace=self.namespace)
            except ValueError:
                continue
            log.warning("removing the runner host of lost task %s", name)
            try:
                RayHandle(name, actor, {"pid": 0, "create_time": 0.0}, None).cleanup()
            except OSError as exc:
                log.error("task %s: %s", name, exc)
