"""The runner host: one detached, named Ray actor per job (``DESIGN.md`` "Scale-out on Ray").

It starts the **unchanged runner entry** (``python -m runner <spec.json>``) as a fresh
subprocess on its node, with the isolation of a local job: own session (``setsid``), a cgroup
where the node lets this process create one below its own (the same ``supervisor.cgroups`` code
as local jobs; never moving other processes), ``CUDA_VISIBLE_DEVICES`` from the GPU ids Ray
assigned to the actor, the thread counts of the spec. Through it the supervisor stops the job
(SIGTERM to the process group, SIGKILL to the group and the cgroup), learns its exit, lists what
is left of it and frees its cgroup; the actor itself is removed only after that. The runner does
not outlive its host (``JobSpec.host_pid``), and each start removes the job cgroups that hosts
now gone left on the node (``_remove_orphans``).

Events: with ``relay`` the runner publishes to a SUB socket this host binds on a node-local IPC
address, and the supervisor takes them in batches with ``events`` (a long poll: answered as soon
as events are there); with ``direct`` the runner connects to the supervisor's own events socket;
with ``tcp`` to the supervisor's TCP port as a CURVE client, with the keys its spec carries
(``supervisor.ray.events_tcp``). Either way the spec is written 0600 in the task directory.

A serving replica whose address is ``protocol.serving.TCP_ON_NODE`` (``tcp`` events: a port may
be opened between nodes) gets this node's address in it (``Ray``'s node IP): it binds an
ephemeral port there and says which in its task directory.

A ``start`` cancelled by the supervisor (its task was cancelled while the call waited) lets a
spawn under way finish, then kills and cleans up what it started before the call ends: the
supervisor removes this actor only after that.

Ray imports this module in its worker processes: it imports no torch, only the supervisor's
process-handling parts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import shutil
import socket
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from protocol import serving as sv
from protocol.jobs import JobSpec
from protocol.settings import Settings
from supervisor.cgroups import instance_key
from supervisor.handle import RunnerHandle
from supervisor.job_cgroup import JobLimits
from supervisor.spawner import Spawner

#: Most buffered event messages a host keeps for the supervisor (the runner journals every event
#: first, so a supervisor that fell this far behind reads the rest from the journal).
RELAY_LIMIT = 200_000
#: Most messages one ``events`` answer carries.
RELAY_BATCH = 2_000

log = logging.getLogger(__name__)


class RunnerHost:
    """One job's process on a Ray node (see the module docstring). An async actor: ``wait`` and
    ``events`` wait without blocking the other calls."""

    def __init__(self, home: str, relay: bool) -> None:
        settings = Settings(home=Path(home), start_mode="cold")
        self._spawner = Spawner(settings)
        # Job cgroups of Ray hosts are named apart from a local supervisor's (never swept by it).
        self._spawner.cgroups.instance = f"{instance_key(home)}-ray"
        self._relay = relay
        self._handle: RunnerHandle | None = None
        self._ctx: zmq.asyncio.Context | None = None
        self._sub: zmq.asyncio.Socket | None = None
        self._events: deque[list[bytes]] = deque()
        self._arrived = asyncio.Event()
        self._relay_task: asyncio.Task[None] | None = None
        self.dropped = 0
        self._address = ""
        self._info: dict[str, Any] | None = None

    # -- start ---------------------------------------------------------------------------
    async def start(self, spec_data: bytes, limits: dict[str, Any]) -> dict[str, Any]:
        """Start the runner of ``spec_data`` (a ``JobSpec``); return what identifies it."""
        import ray

        spec = JobSpec.load(spec_data)
        gpus = [str(int(g)) for g in ray.get_gpu_ids()]
        if spec.host_device.startswith("cuda") and not gpus:
            raise RuntimeError("the job asked for a GPU but Ray assigned none to its runner host")
        # The runner does not outlive this host (``JobSpec.host_pid``): once it is gone, nothing
        # could stop the job or hear it.
        spec = dataclasses.replace(spec, cuda_visible_devices=",".join(gpus[:1]), host_pid=os.getpid())
        address = spec.params.get("address") if spec.job == sv.JOB else None
        if isinstance(address, str) and sv.NODE_HOST in address:
            ip = ray.util.get_node_ip_address()
            host = f"[{ip}]" if ":" in ip else ip
            spec = dataclasses.replace(spec, params={**spec.params, "address": address.replace(sv.NODE_HOST, host)})
        # The supervisor made the task directory just before this call: a node that does not
        # see it is not on the supervisor's filesystem.
        if not Path(spec.task_dir).is_dir():
            raise FileNotFoundError(
                f"the task directory {spec.task_dir} does not exist on node {socket.gethostname()}: "
                "job paths must be on a filesystem shared with the supervisor"
            )
        if self._relay:
            spec = dataclasses.replace(spec, events_endpoint=await self._open_relay(spec.task_id))
        # Only this job's cgroup, below this process's own; never a v2 move of other processes.
        self._spawner.cgroups.prepare_without_moving()
        await asyncio.to_thread(self._remove_orphans, spec.task_id)
        spawning = asyncio.ensure_future(self._spawner.spawn(spec, JobLimits(**limits)))
        try:
            self._handle = await asyncio.shield(spawning)
        except asyncio.CancelledError:
            # The supervisor cancelled this call (its task was cancelled meanwhile): the spawn
            # goes to its end, then nothing of the job may outlive the call.
            try:
                self._handle = await spawning
            except Exception:  # noqa: BLE001 - nothing started
                self._handle = None
            self.cleanup()
            raise
        handle = self._handle
        self._info = {
            "pid": handle.pid,
            "create_time": handle.create_time,
            "cgroup": handle.cgroup,
            "limits_enforced": handle.limits_enforced,
            "warning": handle.warning,
            "node": socket.gethostname(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "gpus": gpus,
        }
        return self._info

    def _relay_head(self) -> str:
        """How the names of this instance's relay folders begin (then the task id, ``-``, and
        ``mkdtemp``'s 8 characters)."""
        return f"rfuav-host-{self._spawner.cgroups.instance}-"

    def _remove_orphans(self, own: str) -> list[str]:
        """Remove what runner hosts now gone left on this node (a node's Ray processes killed
        while the machine lives on: their runners stop by themselves, ``JobSpec.host_pid``, and
        nobody else is left to clean up): their job cgroups, killing what is still in one first
        (``JobCgroup.remove``), and their relay folders. A task whose host exists (its named
        actor, alive or restarting) keeps its own, and so does one whose host Ray cannot tell
        about now. Returns the task ids whose cgroups went; never raises."""
        import ray

        from supervisor.ray.executor import namespace

        ns = namespace(self._spawner.settings)

        def gone(task_id: str) -> bool:
            if task_id == own:
                return False
            try:
                ray.get_actor(task_id, namespace=ns)
            except ValueError:  # no such actor: its host is gone
                return True
            except Exception:  # noqa: BLE001 - Ray cannot tell now: leave it
                return False
            return False

        removed: list[str] = []
        try:
            for task_id, dirs in self._spawner.cgroups.leftovers().items():
                cg = self._spawner.cgroups.attach(dirs) if gone(task_id) else None
                if cg is not None and cg.remove():
                    removed.append(task_id)
            head = self._relay_head()
            for folder in Path(tempfile.gettempdir()).glob(f"{head}*"):
                if gone(folder.name[len(head) : -9]):
                    shutil.rmtree(folder, ignore_errors=True)
        except Exception:  # noqa: BLE001 - a sweep never fails a job's start
            log.exception("cleaning up after runner hosts that are gone failed")
        if removed:
            log.warning("removed the job cgroups of %d runner host(s) gone: %s", len(removed), ", ".join(removed))
        return removed

    def describe(self) -> dict[str, Any] | None:
        """What ``start`` returned (None while it has not): how a new supervisor adopts the job."""
        return self._info

    async def _open_relay(self, task_id: str) -> str:
        self._ctx = zmq.asyncio.Context()
        sub = self._ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, 0)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        folder = Path(tempfile.mkdtemp(prefix=f"{self._relay_head()}{task_id}-"))
        self._address = f"ipc://{folder / 'events.sock'}"
        sub.bind(self._address)
        self._sub = sub
        self._relay_task = asyncio.ensure_future(self._pump())
        return self._address

    async def _pump(self) -> None:
        assert self._sub is not None
        while True:
            msg = await self._sub.recv_multipart()
            if len(self._events) >= RELAY_LIMIT:
                self.dropped += 1  # in the journal: the supervisor's catch-up reads it
                continue
            self._events.append(msg)
            self._arrived.set()

    async def events(self, timeout: float) -> list[list[bytes]]:
        """The event messages the runner sent since the last call (``[task_id, event, ...]``),
        waiting up to ``timeout`` seconds for the first."""
        if not self._events:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout)
            except TimeoutError:
                return []
        out: list[list[bytes]] = []
        while self._events and len(out) < RELAY_BATCH:
            out.append(self._events.popleft())
        return out

    # -- the job's end -------------------------------------------------------------------
    async def wait(self) -> dict[str, Any]:
        """Once the runner exited: ``{code, oom_killed, memory_limit_mb}`` (``ExitInfo``)."""
        assert self._handle is not None
        info = await self._handle.wait()
        # Events it sent just before exiting may still be on the way to the relay.
        await asyncio.sleep(0.05)
        return dataclasses.asdict(info)

    def terminate(self) -> None:
        if self._handle is not None:
            self._handle.terminate()

    def kill(self) -> None:
        if self._handle is not None:
            self._handle.kill()

    def alive_pids(self) -> list[int]:
        return self._handle.alive_pids() if self._handle is not None else []

    def cgroup_state(self) -> dict[str, Any]:
        state = self._handle.cgroup_state() if self._handle is not None else {}
        state["node"] = socket.gethostname()
        return state

    def cleanup(self) -> dict[str, Any]:
        """Kill whatever is left of the job, remove its cgroup and say what was left: the
        supervisor removes this actor only when ``left`` is empty."""
        handle = self._handle
        left: list[int] = []
        if handle is not None:
            for _ in range(50):
                left = handle.alive_pids()
                if not left:
                    break
                handle.kill()
                time.sleep(0.02)
            handle.cleanup()
        if self._sub is not None:
            self._sub.close(linger=0)
            self._sub = None
            if self._address:
                path = Path(self._address.removeprefix("ipc://"))
                path.unlink(missing_ok=True)
                path.parent.rmdir()
        return {"left": left}

    def ping(self) -> dict[str, Any]:
        import ray

        return {"node": socket.gethostname(), "node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}
