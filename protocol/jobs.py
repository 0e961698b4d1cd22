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
from protocol.settings import Settings


def _default(name: str) -> Any:
    """The default of setting ``name`` (declared once, in ``protocol.settings``), JSON-safe."""
    value = Settings.__dataclass_fields__[name].default
    if isinstance(value, tuple):
        return tuple(str(v) for v in value)
    return str(value) if isinstance(value, Path) else value


@dataclass(frozen=True, slots=True)
class JobConfig:
    """The settings a job needs, as the supervisor read them (``supervisor.jobs.job_config``).

    The defaults are the settings' own, for a spec written without one (tests, benchmarks):
    ``data_roots`` empty means no confinement there; the supervisor always sends its roots.
    """

    home: str = _default("home")
    #: Every local path a job reads or writes must resolve inside one of these.
    data_roots: tuple[str, ...] = _default("data_roots")
    upload_url: str = _default("upload_url")
    upload_file_field: str = _default("upload_file_field")
    upload_label_field: str = _default("upload_label_field")
    upload_type_field: str = _default("upload_type_field")
    upload_auth_header: str = _default("upload_auth_header")
    upload_retries: int = _default("upload_retries")
    download_max_bytes: int = _default("download_max_bytes")
    download_timeout: float = _default("download_timeout")
    unzip_max_bytes: int = _default("unzip_max_bytes")
    unzip_max_ratio: float = _default("unzip_max_ratio")
    unzip_max_entries: int = _default("unzip_max_entries")
    url_allow_hosts: tuple[str, ...] = _default("url_allow_hosts")
    url_allow_loopback: bool = _default("url_allow_loopback")


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
    #: How much nicer than its parent (the supervisor, or the fork server it started) the
    #: runner makes itself before any work (``RFUAV_JOB_NICE``; 0: unchanged).
    nice: int = 0
    #: Settings the job needs (upload fields, download and unzip limits, data roots, home).
    config: JobConfig = field(default_factory=JobConfig)
    #: Seconds to wait for the supervisor's subscription before the first event.
    subscribe_timeout: float = 10.0
    #: Events over ZeroMQ TCP with CURVE (``RFUAV_RAY_EVENTS=tcp``): the supervisor's public key
    #: and this job's own keypair (Z85); empty otherwise. Secret: the spec file is 0600.
    events_server_key: str = ""
    events_public_key: str = ""
    events_secret_key: str = ""
    #: The process this runner may not outlive: its Ray runner host (``supervisor.ray.host``),
    #: its parent. Once that is gone nothing can stop or hear the job, and its task has failed
    #: ("node lost"): the runner sends itself SIGTERM (the cancel path), then SIGKILL to its
    #: process group ``grace_seconds`` later. 0: none (a local job outlives its supervisor,
    #: which adopts it after a restart).
    host_pid: int = 0
    #: SIGTERM → SIGKILL grace of a runner that stops by itself (``RFUAV_GRACE_SECONDS``).
    grace_seconds: float = 10.0

    @property
    def journal_path(self) -> Path:
        return Path(self.task_dir) / "events.jsonl"

    def dump(self) -> bytes:
        return orjson.dumps(as_dict(self))

    @classmethod
    def load(cls, data: bytes) -> JobSpec:
        obj = decode_object(data)
        return build(cls, obj, where="job spec")  # type: ignore[no-any-return]
