"""Outcome decisions and the job spec (pure functions of the reaper)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from protocol.settings import Settings
from protocol.tasks import TaskRecord
from supervisor.jobs import job_spec, outcome


@pytest.mark.parametrize(
    "final, code, oom, cancel, status, message",
    [
        (("completed", "completed"), 0, False, False, "completed", "completed"),
        # The runner's own word wins over a later signal or cancel.
        (("failed", "RuntimeError: boom"), -9, False, False, "failed", "RuntimeError: boom"),
        (("completed", "completed"), 0, False, True, "completed", "completed"),
        (None, -9, False, True, "cancelled", "cancelled on request"),
        (None, -9, True, False, "failed", "out of memory (limit 64 MiB)"),
        (None, -9, False, False, "failed", "killed by signal SIGKILL"),
        (None, -signal.SIGSEGV, False, False, "failed", "killed by signal SIGSEGV"),
        (None, -15, False, False, "cancelled", "cancelled: the runner was terminated by SIGTERM"),
        (None, 3, False, False, "failed", "runner failed before ready (see stderr.log in the task directory)"),
        (None, 0, False, False, "failed", "runner exited without reporting"),
        (None, 7, False, False, "failed", "exited with code 7"),
    ],
)
def test_outcome(final: tuple[str, str] | None, code: int, oom: bool, cancel: bool, status: str, message: str) -> None:
    result = outcome(final, code, oom, 64, cancel, "cancelled on request")
    assert (result.status, result.message) == (status, message)
    assert result.from_supervisor is (final is None)


def test_outcome_unknown_exit_of_adopted_runner() -> None:
    result = outcome(None, None, False, 0, False)
    assert result.status == "failed" and "unknown" in result.message


def _task(job: str = "training", task_type: str = "training") -> TaskRecord:
    return TaskRecord(
        "t1", task_type, job, {"num_epochs": 3, "token": "s3cret"}, "cuda", 5, None, None, task_dir="/x/tasks/t1"
    )


def test_spec_on_cpu() -> None:
    settings = Settings(home=Path("/x"), runtime_dir=Path("/tmp/rfx"), cpu_batch_cap=8, opencv_threads=1)
    spec = job_spec(settings, _task(), "cpu", ncores=8)
    assert (spec.device, spec.host_device, spec.cuda_visible_devices) == ("cpu", "cpu", "")
    assert (spec.torch_threads, spec.dataloader_workers, spec.opencv_threads, spec.batch_cap) == (4, 4, 1, 8)
    assert spec.events_endpoint == "ipc:///tmp/rfx/events-in.sock"
    assert spec.params["token"] == "s3cret"  # the runner needs it for the upload
    assert spec.config.home == "/x" and spec.config.download_max_bytes == settings.download_max_bytes


def test_spec_on_gpu_maps_device() -> None:
    settings = Settings(home=Path("/x"), runtime_dir=Path("/tmp/rfx"))
    spec = job_spec(settings, _task(), "cuda:1", ncores=2)
    assert (spec.device, spec.host_device, spec.cuda_visible_devices, spec.batch_cap) == ("cuda:0", "cuda:1", "1", None)
    assert spec.torch_threads == 1 and spec.dataloader_workers == 1
