"""A job's spec before spawn and its outcome after reap: the two pure halves of a runner's life.

``job_spec`` turns a task and the device the scheduler chose into the ``JobSpec`` the runner
reads (device mapping, thread counts, the settings a job needs). ``outcome`` decides how a task
ends from what the runner said and how its process exited:

1. the runner's own final status event wins (a ``failed`` reported after a cancel request
   never gets here as final: see ``supervisor.pipeline``);
2. else a cancel asked through the API → ``cancelled``;
3. else the exit: OOM kill → failed "out of memory (limit N MiB)"; SIGTERM (an operator's
   ``kill -TERM``) → cancelled; another signal → failed "killed by signal SIGKILL"; code 3 →
   failed "runner failed before ready"; 0 → failed "runner exited without reporting"; N →
   failed "exited with code N"; unknown (an adopted runner) → failed.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from typing import Any

from protocol.jobs import JobConfig, JobSpec
from protocol.settings import Settings, auto_job_memory_mb
from protocol.tasks import CANCELLED, FAILED, TaskRecord

#: ``runner.entry.EXIT_STARTUP_FAILURE`` (not imported: the supervisor never imports runner).
EXIT_STARTUP_FAILURE = 3


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def job_config(settings: Settings) -> JobConfig:
    """The settings a runner needs, built once per job from the supervisor's own."""
    return JobConfig(
        home=str(settings.home),
        data_roots=tuple(str(p) for p in settings.data_roots),
        upload_url=settings.upload_url,
        upload_file_field=settings.upload_file_field,
        upload_label_field=settings.upload_label_field,
        upload_type_field=settings.upload_type_field,
        upload_auth_header=settings.upload_auth_header,
        upload_retries=settings.upload_retries,
        download_max_bytes=settings.download_max_bytes,
        download_timeout=settings.download_timeout,
        unzip_max_bytes=settings.unzip_max_bytes,
        unzip_max_ratio=settings.unzip_max_ratio,
        unzip_max_entries=settings.unzip_max_entries,
        url_allow_hosts=settings.url_allow_hosts,
        url_allow_loopback=settings.url_allow_loopback,
    )


def job_spec(settings: Settings, task: TaskRecord, host_device: str, ncores: int | None = None) -> JobSpec:
    """The spec of ``task`` running on ``host_device`` (``cpu`` or ``cuda:N``)."""
    n = ncores if ncores is not None else cores()
    threads = max(1, int(n * settings.cpu_thread_fraction))
    workers = int(n * settings.cpu_worker_fraction)
    on_gpu = host_device.startswith("cuda:")
    return JobSpec(
        task_id=task.task_id,
        task_type=task.task_type,
        job=task.job,
        params=task.params,
        # The job sees only its GPU, as cuda:0.
        device="cuda:0" if on_gpu else "cpu",
        host_device=host_device,
        task_dir=str(task.task_dir),
        events_endpoint=settings.addresses.events_in,
        cuda_visible_devices=host_device[5:] if on_gpu else "",
        torch_threads=threads,
        interop_threads=1,
        opencv_threads=settings.opencv_threads,
        dataloader_workers=workers,
        batch_cap=None if on_gpu else settings.cpu_batch_cap,
        config=job_config(settings),
        nice=settings.job_nice,
        grace_seconds=settings.grace_seconds,
    )


#: Bounds of the diagnostic job's parameters (``runner.diagnostic``): enough for every test and
#: benchmark, never enough to flood the store or take the machine.
DIAGNOSTIC_BOUNDS: dict[str, float] = {
    "events": 1_000_000,
    "size": 65_536,
    "rate": 100_000,
    "sleep": 3_600,
    "spin": 3_600,
}
#: Most bytes of event padding one diagnostic job may ask for (``events`` × ``size``).
DIAGNOSTIC_MAX_BYTES = 1 << 30


def diagnostic_problem(settings: Settings, params: dict[str, Any]) -> str | None:
    """Why the diagnostic ``params`` are refused (None when they are within bounds)."""
    if not settings.diagnostic:
        return "the diagnostic job is off on this service (set RFUAV_DIAGNOSTIC=1 to serve it)"
    for name, bound in DIAGNOSTIC_BOUNDS.items():
        value = params.get(name, 0)
        if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= bound:
            return f"{name} must be a number between 0 and {bound:g}, got {value!r}"
    if params.get("events", 0) * params.get("size", 0) > DIAGNOSTIC_MAX_BYTES:
        return f"events x size must be at most {DIAGNOSTIC_MAX_BYTES} bytes"
    memory = params.get("memory_mb", 0)
    cap = settings.job_memory_mb or auto_job_memory_mb({})
    if not isinstance(memory, int) or isinstance(memory, bool) or not 0 <= memory <= cap:
        return f"memory_mb must be an integer between 0 and the job's memory limit ({cap} MiB), got {memory!r}"
    return None


@dataclass(frozen=True, slots=True)
class Outcome:
    status: str
    message: str
    #: False when the runner reported it itself (no supervisor event needed).
    from_supervisor: bool = True


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def outcome(
    final: tuple[str, str] | None,
    code: int | None,
    oom_killed: bool,
    memory_limit_mb: int,
    cancel_requested: bool,
    cancel_reason: str = "cancelled",
) -> Outcome:
    """How a task ends (see the module docstring for the order of the rules)."""
    if final is not None:
        return Outcome(final[0], final[1], from_supervisor=False)
    if cancel_requested:
        return Outcome(CANCELLED, cancel_reason)
    if oom_killed:
        limit = f"limit {memory_limit_mb} MiB" if memory_limit_mb else "no limit set"
        return Outcome(FAILED, f"out of memory ({limit})")
    if code is None:
        return Outcome(
            FAILED, "runner ended without reporting (exit status unknown: adopted after a supervisor restart)"
        )
    if code == -signal.SIGTERM:
        return Outcome(CANCELLED, "cancelled: the runner was terminated by SIGTERM")
    if code < 0:
        return Outcome(FAILED, f"killed by signal {_signal_name(-code)}")
    if code == EXIT_STARTUP_FAILURE:
        return Outcome(FAILED, "runner failed before ready (see stderr.log in the task directory)")
    if code == 0:
        return Outcome(FAILED, "runner exited without reporting")
    return Outcome(FAILED, f"exited with code {code}")
