"""``RayHandle``: one job on Ray as the lifecycle sees any job (``supervisor.executor.JobHandle``),
through its runner host actor (``supervisor.ray.host.RunnerHost``): ``wait`` for the exit,
``terminate``/``kill``, ``alive_pids``, ``cleanup`` (the host goes once nothing of its job is
left), and with ``RFUAV_RAY_EVENTS=relay`` the events relayed from the host (``_relay``).
``RayExecutor`` (``supervisor.ray.executor``) makes them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from protocol import events as ev
from supervisor.executor import ExitInfo, RunnerLost

log = logging.getLogger(__name__)

#: Seconds one ``events`` long poll of a runner host waits.
EVENTS_POLL = 1.0
#: Seconds a blocking call to a runner host may take (ps, cleanup).
CALL_TIMEOUT = 30.0
#: Seconds an aborted start waits for Ray to free its host's name (pending actors: milliseconds).
REMOVE_TIMEOUT = 10.0

#: Take a batch of runner events (``[[task_id, event, ...], ...]``, one event per item) into the pipeline.
Deliver = Callable[[list[list[bytes]]], Any]


def lost(exc: BaseException, task_id: str) -> RunnerLost:
    text = str(exc)
    if "node" in text.lower() and ("died" in text.lower() or "dead" in text.lower() or "lost" in text.lower()):
        return RunnerLost(f"node lost: the Ray node running task {task_id}'s runner host died")
    return RunnerLost(f"runner host died: {type(exc).__name__}: {text.splitlines()[0] if text else ''}")


def remove(actor: Any) -> None:
    import ray

    try:
        ray.kill(actor, no_restart=True)
    except Exception as exc:  # noqa: BLE001 - already gone
        log.debug("removing a runner host: %s", exc)


def remove_and_confirm(actor: Any, name: str, namespace: str) -> bool:
    """``remove``, then wait until Ray no longer knows the name (the actor is dead: a pending
    one never gets a process); False if it still does after ``REMOVE_TIMEOUT``. Blocks."""
    import ray

    remove(actor)
    deadline = time.monotonic() + REMOVE_TIMEOUT
    while time.monotonic() < deadline:
        try:
            ray.get_actor(name, namespace=namespace)
        except ValueError:
            return True
        time.sleep(0.02)
    return False


class RayHandle:
    """One job on Ray, through its runner host actor (a ``JobHandle``)."""

    def __init__(
        self,
        task_id: str,
        actor: Any,
        info: dict[str, Any],
        deliver: Deliver | None,
        on_cleanup: Callable[[], None] = lambda: None,
    ) -> None:
        """``deliver``: relay the host's events into it; ``on_cleanup``: called once the job's
        end was dealt with (its TCP events key is forgotten then)."""
        self.task_id = task_id
        self._actor = actor
        self._on_cleanup = on_cleanup
        self._pid = int(info["pid"])
        self._create_time = float(info["create_time"])
        self._cgroup: dict[str, str] = dict(info.get("cgroup") or {})
        self._enforced = bool(info.get("limits_enforced"))
        self._warning: str | None = info.get("warning")
        self.node = str(info.get("node", "?"))
        self.node_id = str(info.get("node_id", ""))
        self._deliver = deliver
        self._pump: asyncio.Task[None] | None = None
        self._done = False
        self._gone = False
        if deliver is not None:
            self._pump = asyncio.ensure_future(self._relay())

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def create_time(self) -> float:
        return self._create_time

    @property
    def cgroup(self) -> dict[str, str]:
        return self._cgroup

    @property
    def limits_enforced(self) -> bool:
        return self._enforced

    @property
    def warning(self) -> str | None:
        on = f"on Ray node {self.node}"
        return f"{self._warning} ({on})" if self._warning else None

    async def _relay(self) -> None:
        """Take the runner's events from its host as they come (a long poll) into the pipeline."""
        assert self._deliver is not None
        while True:
            try:
                batch = await self._actor.events.remote(EVENTS_POLL)
            except Exception as exc:  # noqa: BLE001 - the host is gone: wait() says why
                log.debug("task %s: event relay ended: %s", self.task_id, exc)
                return
            if batch:
                self._deliver([ev.unpack(m) for m in batch])  # as the runner packed them
            elif self._done:
                return

    async def wait(self) -> ExitInfo:
        try:
            info = await self._actor.wait.remote()
        except Exception as exc:
            self._gone = True  # its processes went with it: nothing left to list or kill
            raise lost(exc, self.task_id) from None
        finally:
            self._done = True
        if self._pump is not None:
            # Not waiting out the pump's long poll (up to EVENTS_POLL): one quick look at what
            # the host still holds; anything a cancelled poll took is in the journal, which the
            # reap reads next.
            self._pump.cancel()
            try:
                batch = await self._actor.events.remote(0.0)
            except Exception as exc:  # noqa: BLE001 - the journal has every event
                log.debug("task %s: last relay read failed: %s", self.task_id, exc)
            else:
                if batch and self._deliver is not None:
                    self._deliver([ev.unpack(m) for m in batch])
        return ExitInfo(info["code"], bool(info["oom_killed"]), int(info["memory_limit_mb"]))

    def terminate(self) -> None:
        self._actor.terminate.remote()

    def kill(self) -> None:
        self._actor.kill.remote()

    def _call(self, method: str) -> Any:
        import ray

        try:
            return ray.get(getattr(self._actor, method).remote(), timeout=CALL_TIMEOUT)
        except Exception as exc:
            raise OSError(f"runner host of task {self.task_id}: {type(exc).__name__}: {exc}") from None

    def alive_pids(self) -> list[int]:
        if self._gone:
            return []
        pids: list[int] = self._call("alive_pids")
        return pids

    def cgroup_state(self) -> dict[str, Any]:
        state: dict[str, Any] = self._call("cgroup_state")
        return state

    def cleanup(self) -> None:
        """Kill and verify what is left of the job on its node, free its cgroup, then remove the
        host (only once nothing of the job is left). Blocks."""
        import ray

        self._on_cleanup()
        if self._gone:
            return
        try:
            result = ray.get(self._actor.cleanup.remote(), timeout=CALL_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - a dead host took its job's processes with it
            log.warning("task %s: runner host cleanup: %s", self.task_id, exc)
            result = {"left": []}
        if result["left"]:
            raise OSError(f"processes {result['left']} of task {self.task_id} survived SIGKILL: runner host kept")
        try:
            ray.kill(self._actor, no_restart=True)
        except Exception as exc:  # noqa: BLE001 - already gone
            log.debug("task %s: removing the runner host: %s", self.task_id, exc)
