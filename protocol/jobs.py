"""The job spec: everything a runner process needs, written by the supervisor before spawn.

The spec file (``<task_dir>/spec.json``, mode 0600: it may hold an upload token) is the only
input of a runner besides its environment.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from protocol.codec import as_dict, build, decode_object


@dataclass(frozen=True, slots=True)
class JobSpec:
    task_id: str
    task_type: str
    job: str
    params: dict[str, Any]
    #: The device as the job sees it: ``cpu`` or ``cuda:0`` (after ``CUDA_VISIBLE_DEVICES``).
    device: str
    #: The host's device the scheduler chose (``cpu``, ``cuda:1``), for messages.
    host_device: str
    task_dir: str
    events_endpoint: str
    cuda_visible_devices: str = ""
    torch_threads: int = 1
    interop_threads: int = 1
    opencv_threads: int = 1
    dataloader_workers: int = 0
    #: Training on the CPU clamps ``batch_size`` to this (None on a GPU).
    batch_cap: int | None = None
    #: ``cgroup.procs`` files the runner moves itself into before any work.
    cgroup_procs: list[str] = field(default_factory=list)
    #: Settings the job needs (upload fields, download and unzip limits, data roots, home).
    config: dict[str, Any] = field(default_factory=dict)
    #: Seconds to wait for the supervisor's subscription before the first event.
    subscribe_timeout: float = 10.0

    @property
    def journal_path(self) -> Path:
        return Path(self.task_dir) / "events.jsonl"

    def dump(self) -> bytes:
        return orjson.dumps(as_dict(self))

    @classmethod
    def load(cls, data: bytes) -> JobSpec:
        obj = decode_object(data)
        return build(cls, obj, where="job spec")  # type: ignore[no-any-return]
