"""The local executor: jobs as processes on this host (``supervisor.spawner``).

Each job is forked from the preloaded fork server (warm) or started as a fresh interpreter
(cold), in its own session and cgroups; a runner a previous supervisor started is adopted by
pid and start time. See ``supervisor.executor`` for the seam this implements.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from typing import Any

import orjson

from protocol.jobs import JobSpec
from protocol.settings import Settings
from protocol.tasks import TaskRecord
from supervisor.handle import RunnerHandle
from supervisor.job_cgroup import JobLimits
from supervisor.spawner import Spawner

log = logging.getLogger(__name__)

#: Longest ``close`` waits for the fork server to stop.
CLOSE_SECONDS = 10.0


class LocalExecutor:
    """An ``Executor`` over a ``Spawner``: jobs start once the spawner is ready."""

    def __init__(self, settings: Settings) -> None:
        self.spawner = Spawner(settings)
        self._ready: asyncio.Future[None] | None = None

    @property
    def mode(self) -> str:
        return self.spawner.mode

    def describe(self) -> dict[str, Any]:
        return {"executor": "local", "mode": self.mode}

    def open(self) -> None:
        """Prepare cgroups and, in warm mode, bring the fork server to ready, in the background."""
        self._ready = asyncio.ensure_future(self.spawner.start())
        self._ready.add_done_callback(_log_failure)

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.spawner.stop(), CLOSE_SECONDS)
        except Exception:
            log.exception("spawner did not stop cleanly")

    async def start(self, spec: JobSpec, limits: JobLimits) -> RunnerHandle:
        if self._ready is not None:
            await self._ready
        return await self.spawner.spawn(spec, limits)

    def abort(self, task_id: str) -> None:
        """A local start never waits on anything but this host (milliseconds): the lifecycle
        stops the runner once its process exists."""

    def admit(self, device: str, limits: JobLimits) -> bool:
        return True  # this host's slots are the scheduler's limits

    def adopt(self, task: TaskRecord) -> RunnerHandle | None:
        if task.pid is None or task.pid_started is None:
            return None
        cgroup = orjson.loads(task.cgroup) if task.cgroup else {}
        return self.spawner.adopt(task.pid, task.pid_started, cgroup)

    def remove_leftovers(self, keep: Collection[str]) -> None:
        """Job cgroups of this instance that no adopted runner uses: a lost runner's (and any
        stray process still in them, which belongs to that job) go."""
        try:
            leftovers = self.spawner.leftovers()
        except OSError as exc:
            log.warning("could not list leftover job cgroups: %s", exc)
            return
        for task_id, dirs in leftovers.items():
            if task_id in keep:
                continue
            cgroup = self.spawner.cgroups.attach(dirs)
            if cgroup is not None:
                log.warning("removing leftover cgroups of task %s: %s", task_id, sorted(dirs.values()))
                cgroup.remove()


def _log_failure(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.error("spawner failed to start: %s", fut.exception())
