"""A stand-in for ``pynvml`` (nvidia-ml-py) describing GPUs that are not there, for tests of
the wiring from NVML to the scheduler, the job's CUDA device and ``ps`` on a host without one.

Put this directory first on ``sys.path`` (``PYTHONPATH`` for a daemon) and describe the GPUs in
the environment variable ``FAKE_NVML`` (JSON, read by ``nvmlInit``)::

    {"gpus": [{"name": "Fake A", "total": 8589934592, "used": 0, "free": 8589934592,
               "utilization": 10}, ...],
     "procs_file": "/path/procs.json"}

``procs_file`` (optional, read on every process query) holds ``{"<gpu index>": {"compute":
[[pid, bytes or null], ...], "graphics": [...]}}``: what NVML would list as using each GPU.
Only the calls ``supervisor.gpu`` makes exist here; each answers in NVML's units and types.
"""

from __future__ import annotations

import json
import os
from types import SimpleNamespace
from typing import Any


class NVMLError(Exception):
    pass


class NVMLError_Uninitialized(NVMLError):  # noqa: N801 - pynvml's name
    pass


nvmlMemory_v2 = 0x02000028  # a version tag, as in pynvml

_config: dict[str, Any] | None = None


def _gpus() -> list[dict[str, Any]]:
    if _config is None:
        raise NVMLError_Uninitialized("Uninitialized")
    gpus: list[dict[str, Any]] = _config["gpus"]
    return gpus


def nvmlInit() -> None:
    global _config
    _config = json.loads(os.environ.get("FAKE_NVML", '{"gpus": []}'))


def nvmlShutdown() -> None:
    global _config
    _config = None


def nvmlDeviceGetCount() -> int:
    return len(_gpus())


def nvmlSystemGetCudaDriverVersion() -> int:
    _gpus()
    return 12040


def nvmlDeviceGetHandleByIndex(index: int) -> int:
    if not 0 <= index < len(_gpus()):
        raise NVMLError("Invalid Argument")
    return index


def nvmlDeviceGetName(handle: int) -> str:
    return str(_gpus()[handle]["name"])


def nvmlDeviceGetCudaComputeCapability(handle: int) -> tuple[int, int]:
    _gpus()
    return (8, 6)


def nvmlDeviceGetMemoryInfo(handle: int, version: int | None = None) -> SimpleNamespace:
    gpu = _gpus()[handle]
    mem = SimpleNamespace(total=gpu["total"], used=gpu["used"], free=gpu["free"])
    if version == nvmlMemory_v2:
        mem.reserved = gpu.get("reserved", 0)
    return mem


def nvmlDeviceGetUtilizationRates(handle: int) -> SimpleNamespace:
    return SimpleNamespace(gpu=_gpus()[handle].get("utilization", 0), memory=0)


def _procs(handle: int, kind: str) -> list[SimpleNamespace]:
    _gpus()
    path = (_config or {}).get("procs_file")
    if not path or not os.path.exists(path):
        return []
    with open(path) as fh:
        table = json.load(fh)
    return [SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in table.get(str(handle), {}).get(kind, [])]


def nvmlDeviceGetComputeRunningProcesses(handle: int) -> list[SimpleNamespace]:
    return _procs(handle, "compute")


def nvmlDeviceGetGraphicsRunningProcesses(handle: int) -> list[SimpleNamespace]:
    return _procs(handle, "graphics")
