"""GPU facts from NVML (``nvidia-ml-py``): never torch, which the supervisor must not import.

A host without NVML (no driver, no library, no device) has no GPU: ``count`` is 0,
``available`` False, and nothing here raises. A query that fails later (a GPU fallen off the
bus) is logged and reported as unknown rather than crashing the daemon.

The formatting of NVML's plain numbers into the contract's shapes is done by pure functions
(``device_entry``, ``cuda_version_text``, ``torch_cuda_version``, and the start-up summary's
``protocol.hardware.summary_lines``, which ``rfuav gpu`` prints too) so that it can be tested on
a machine without a GPU, from recorded values.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from protocol import hardware

log = logging.getLogger(__name__)

GB = 1024**3


def cuda_version_text(driver_version: int) -> str:
    """NVML's CUDA driver version number (e.g. 12040) as text ("12.4")."""
    return f"{driver_version // 1000}.{(driver_version % 1000) // 10}"


def _gb(value: int | None) -> float:
    return round((value or 0) / GB, 2)


def device_entry(
    index: int,
    name: str,
    capability: tuple[int, int] | None,
    total: int,
    used: int,
    free: int,
    reserved: int,
    utilization: float | None,
    current_tasks: Mapping[str, int] | None,
) -> dict[str, Any]:
    """One device as ``/resources/gpu`` shows it. Memory arguments are bytes (NVML's
    ``used`` is what the contract calls allocated, its ``reserved`` the driver's own cache);
    ``utilization`` is the GPU's busy percentage; ``current_tasks`` the scheduler's running
    counts for ``cuda:<index>`` (``training`` and ``inference`` always present)."""
    tasks = {"training": 0, "inference": 0}
    tasks.update({k: int(v) for k, v in (current_tasks or {}).items()})
    return {
        "id": index,
        "device_name": f"cuda:{index}",
        "name": name,
        "compute_capability": f"{capability[0]}.{capability[1]}" if capability else None,
        "total_memory_gb": _gb(total),
        "allocated_memory_gb": _gb(used),
        "cached_memory_gb": _gb(reserved),
        "free_memory_gb": _gb(free),
        "utilization": float(utilization) if utilization is not None else 0.0,
        "current_tasks": tasks,
    }


def torch_version() -> str | None:
    """The installed torch's version, read from its metadata (torch is never imported)."""
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None


#: ``cuda: Optional[str] = '12.4'`` (or ``= None``) in torch's generated ``torch/version.py``.
_TORCH_CUDA = re.compile(r"^cuda\b[^=\n]*=\s*(?:'([^']*)'|\"([^\"]*)\"|None)", re.MULTILINE)


def torch_cuda_version(version_py: str | None = None) -> str | None:
    """The CUDA version torch was built for (``torch.version.cuda``; None: a CPU build or no
    torch), read from the text of its ``torch/version.py``, never by importing torch."""
    if version_py is None:
        try:
            path = Path(str(importlib.metadata.distribution("torch").locate_file("torch/version.py")))
            version_py = path.read_text(encoding="utf-8")
        except (importlib.metadata.PackageNotFoundError, OSError):
            return None
    match = _TORCH_CUDA.search(version_py)
    return (match.group(1) or match.group(2) or None) if match else None


class Gpus:
    """The host's GPUs as NVML sees them. Initialises NVML once; safe without it."""

    def __init__(self) -> None:
        self.count = 0
        #: Why there is no GPU (None when NVML found at least one).
        self.reason: str | None = None
        self.cuda_version: str | None = None
        self._torch_cuda = torch_cuda_version()
        self._nvml: Any = None
        try:
            import pynvml
        except ImportError as exc:
            self.reason = f"nvidia-ml-py not installed ({exc})"
            return
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:  # e.g. NVMLError_LibraryNotFound: no driver here
            self.reason = f"NVML unavailable: {exc}"
            log.info("no GPU: %s", self.reason)
            return
        self._nvml = pynvml
        try:
            self.count = int(pynvml.nvmlDeviceGetCount())
            self.cuda_version = cuda_version_text(int(pynvml.nvmlSystemGetCudaDriverVersion()))
        except pynvml.NVMLError as exc:
            self.reason = f"NVML query failed: {exc}"
            log.warning("GPU discovery failed: %s", exc)
        if self.count == 0 and self.reason is None:
            self.reason = "NVML reports no GPU"

    @property
    def available(self) -> bool:
        return self.count > 0

    def _handle(self, index: int) -> Any:
        return self._nvml.nvmlDeviceGetHandleByIndex(index)

    def _memory(self, handle: Any) -> tuple[int, int, int, int]:
        """(total, used, free, reserved) bytes; v2 memory info when the driver has it."""
        nvml = self._nvml
        try:
            mem = nvml.nvmlDeviceGetMemoryInfo(handle, version=nvml.nvmlMemory_v2)
            return int(mem.total), int(mem.used), int(mem.free), int(getattr(mem, "reserved", 0))
        except (nvml.NVMLError, TypeError, AttributeError):
            mem = nvml.nvmlDeviceGetMemoryInfo(handle)
            return int(mem.total), int(mem.used), int(mem.free), 0

    def _name_and_capability(self, handle: Any) -> tuple[str, tuple[int, int] | None]:
        nvml = self._nvml
        name = nvml.nvmlDeviceGetName(handle)
        if isinstance(name, bytes):
            name = name.decode(errors="replace")
        try:
            major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
            return str(name), (int(major), int(minor))
        except nvml.NVMLError:
            return str(name), None

    def devices(self, current_tasks: Mapping[str, Mapping[str, int]] | None = None) -> list[dict[str, Any]]:
        """Every GPU in the contract's device shape; ``current_tasks``: ``{"cuda:N": {type: n}}``."""
        out = []
        for index in range(self.count):
            try:
                handle = self._handle(index)
                name, capability = self._name_and_capability(handle)
                total, used, free, reserved = self._memory(handle)
                try:
                    utilization: float | None = float(self._nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
                except self._nvml.NVMLError:
                    utilization = None
            except self._nvml.NVMLError as exc:
                log.warning("cuda:%d: NVML query failed: %s", index, exc)
                continue
            tasks = (current_tasks or {}).get(f"cuda:{index}")
            out.append(device_entry(index, name, capability, total, used, free, reserved, utilization, tasks))
        return out

    def info(self, current_tasks: Mapping[str, Mapping[str, int]] | None = None) -> dict[str, Any]:
        """The contract's GPU info: ``{available, count, cuda_version, pytorch_version, devices}``."""
        devices = self.devices(current_tasks) if self.count else []
        return {
            "available": bool(devices),
            "count": self.count,
            "cuda_version": self.cuda_version,
            "pytorch_version": torch_version(),
            "devices": devices,
            # Additions: torch's own CUDA, why there is no GPU, the cores jobs share.
            "torch_cuda_version": self._torch_cuda,
            "reason": self.reason,
            "cpu_count": os.cpu_count() or 1,
        }

    def free_memory(self, index: int) -> int:
        """Free bytes on GPU ``index`` (0 when unknown or there is no such GPU)."""
        if not 0 <= index < self.count:
            return 0
        try:
            return self._memory(self._handle(index))[2]
        except self._nvml.NVMLError as exc:
            log.warning("cuda:%d: free memory unknown: %s", index, exc)
            return 0

    def pids_memory(self) -> dict[int, int]:
        """GPU memory (bytes) used by each process, summed over GPUs ({} without NVML)."""
        out: dict[int, int] = {}
        for index in range(self.count):
            try:
                handle = self._handle(index)
                procs = list(self._nvml.nvmlDeviceGetComputeRunningProcesses(handle))
                procs += list(self._nvml.nvmlDeviceGetGraphicsRunningProcesses(handle))
            except self._nvml.NVMLError as exc:
                log.warning("cuda:%d: process list unavailable: %s", index, exc)
                continue
            for proc in procs:
                used = proc.usedGpuMemory
                if isinstance(used, int) and used >= 0:  # None/N/A when the driver hides it
                    out[int(proc.pid)] = out.get(int(proc.pid), 0) + used
        return out

    def summary_lines(self, current_tasks: Mapping[str, Mapping[str, int]] | None = None) -> list[str]:
        """The start-up hardware summary (``protocol.hardware.summary_lines``)."""
        return hardware.summary_lines(self.info(current_tasks))

    def close(self) -> None:
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except self._nvml.NVMLError:
                pass
            self._nvml = None
            self.count = 0
