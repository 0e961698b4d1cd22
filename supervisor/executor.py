"""The seam between a task's lifecycle and whatever gives the task a process.

``supervisor.lifecycle`` never knows which executor runs a task. It asks an ``Executor`` to
``start`` a job spec under its limits and holds the ``JobHandle`` it gets back; after a
supervisor restart it asks the executor to ``adopt`` the task's recorded process. Through the
handle it stops the job (``terminate``, then ``kill`` once the grace period is over: that
escalation is the lifecycle's, the same for every executor), learns how it ended (``wait``),
and has whatever is left of it killed and its resources freed (``alive_pids``, ``kill``,
``cleanup``). A task cancelled before its ``start`` returned is aborted (``abort``): an executor
whose start may wait ends it then (``StartAborted``).

Implementations: ``supervisor.local.LocalExecutor`` (this host: the preloaded fork server, or
a fresh interpreter; ``supervisor.spawner``) and ``supervisor.ray.executor.RayExecutor`` (one
runner host per job, placed by Ray): the queue, limits, store and events stay ours.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Collection
from typing import Any, Protocol

from protocol.jobs import JobSpec
from protocol.tasks import TaskRecord
from supervisor.job_cgroup import JobLimits

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ExitInfo:
    """How a runner ended. ``code``: exit status, ``-signum`` when killed by a signal, None
    when unknown (an adopted runner, or one whose fork server died before reporting)."""

    code: int | None
    oom_killed: bool
    memory_limit_mb: int


class RunnerLost(RuntimeError):
    """A job's process can no longer be followed (its Ray node lost, its runner host died): the
    message is the task's failure reason as it stands."""


class StartAborted(RuntimeError):
    """``start`` ended by ``Executor.abort``: no process of the job exists, nothing of it is left
    (the message says how far the start had come)."""


class JobHandle(Protocol):
    """One started (or adopted) job, as long as any process of it lives."""

    @property
    def pid(self) -> int:
        """The runner's pid (its process group's id too)."""

    @property
    def create_time(self) -> float:
        """The runner's start time: with ``pid``, what identifies it after a restart."""

    @property
    def cgroup(self) -> dict[str, str]:
        """Where the job's limits live (hierarchy -> directory), recorded for ``adopt``."""

    @property
    def limits_enforced(self) -> bool: ...

    @property
    def warning(self) -> str | None:
        """Said in the task's log once it started (e.g. limits the host cannot enforce)."""

    async def wait(self) -> ExitInfo:
        """Resolve once the runner has exited."""

    def terminate(self) -> None:
        """Ask the job to stop (SIGTERM to its process group)."""

    def kill(self) -> None:
        """Kill every process of the job at once."""

    def alive_pids(self) -> list[int]:
        """Every live process of the job (the runner and what it started)."""

    def cgroup_state(self) -> dict[str, Any]:
        """The job's limits and usage as enforced now (``ps``)."""

    def cleanup(self) -> None:
        """Free the job's resources (its cgroups). Blocks: call from a worker thread."""


class Executor(Protocol):
    """Gives started tasks their processes."""

    @property
    def mode(self) -> str:
        """How jobs start now (``warm``, ``cold``, …): said in each task's log."""

    def describe(self) -> dict[str, Any]:
        """What runs jobs, for ``health`` and ``/metrics``: ``{"executor": name, ...}``."""

    def open(self) -> None:
        """Begin getting ready in the background (``start`` waits for it); on the loop."""

    async def close(self) -> None:
        """Stop what ``open`` started; running jobs carry on (a restart adopts them)."""

    async def start(self, spec: JobSpec, limits: JobLimits) -> JobHandle:
        """Start the job of ``spec``; return once its process exists. Raises when it cannot
        (the task then fails with the reason)."""

    def abort(self, task_id: str) -> None:
        """The task's start is no longer wanted (it was cancelled). An executor whose ``start``
        may wait (a runner host that Ray has not placed yet) ends it promptly: ``start`` raises
        ``StartAborted`` once nothing of the job is left. A start that already made the job's
        process returns as usual (the lifecycle then stops the job). The local executor's start
        takes milliseconds: a no-op there. Called on the loop, while or before ``start`` runs."""

    def admit(self, device: str, limits: JobLimits) -> bool:
        """Whether a job for ``device`` with ``limits`` may be placed now, beyond our own slots
        (a cluster's free resources); the local executor always says yes."""

    def adopt(self, task: TaskRecord) -> JobHandle | None:
        """The recorded process of a task a previous supervisor ran, if it still lives."""

    def remove_leftovers(self, keep: Collection[str]) -> None:
        """Remove what jobs of this instance left behind (e.g. cgroups after a crash),
        except for the tasks in ``keep`` (adopted, still running)."""


def release(handle: JobHandle, what: str) -> None:
    """Nothing of a job outlives its runner: kill what is left of it, free its cgroups. Blocks
    (the kernel may take a while to free an OOM-killed job's memory): call from a worker thread.
    ``what`` names the job in log lines."""
    try:
        left = handle.alive_pids()
        if left:
            log.warning("%s: killing %d leftover process(es) %s", what, len(left), left)
            handle.kill()
    except OSError as exc:
        log.warning("%s: leftover check failed: %s", what, exc)
    try:
        handle.cleanup()
    except OSError as exc:
        log.warning("%s: cgroup cleanup failed: %s", what, exc)
