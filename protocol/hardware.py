"""The hardware summary: what the supervisor logs at start and ``rfuav gpu`` prints, one text.

``summary_lines(info)`` formats the GPU info of ``/api/v2/resources/gpu`` (the contract's
``available, count, cuda_version, pytorch_version, devices`` plus the additions
``torch_cuda_version``, ``reason`` and ``cpu_count``) as the original service's start-up block
did: the CUDA and PyTorch versions, then per GPU its model, compute capability, total, used
(with percent) and free memory, and its current tasks. A pure function of that dict, so the
daemon (from NVML) and the CLI (from the API) cannot disagree.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: Task types always shown per GPU; others only when some run there.
SHOWN_TYPES = ("training", "inference")


def _tasks(current: Mapping[str, Any]) -> str:
    shown = [f"{t}={int(current.get(t, 0))}" for t in SHOWN_TYPES]
    shown += [f"{t}={int(n)}" for t, n in current.items() if t not in SHOWN_TYPES and n]
    return ", ".join(shown)


def summary_lines(info: Mapping[str, Any]) -> list[str]:
    """The summary of ``info`` (a ``/resources/gpu`` answer), line by line."""
    devices = list(info.get("devices") or [])
    if devices:
        lines = [f"GPU available: {len(devices)} GPU(s)"]
    else:
        cpus = f", {info['cpu_count']} cores" if info.get("cpu_count") else ""
        why = f" ({info['reason']})" if info.get("reason") else ""
        lines = [f"no GPU{why}: jobs run on the CPU{cpus}"]
    lines.append(
        f"CUDA: driver {info.get('cuda_version') or '-'}, PyTorch built for {info.get('torch_cuda_version') or '-'}"
    )
    lines.append(f"PyTorch: {info.get('pytorch_version') or 'not installed'}")
    for d in devices:
        total = float(d.get("total_memory_gb") or 0.0)
        used = float(d.get("allocated_memory_gb") or 0.0)
        percent = 100.0 * used / total if total else 0.0
        lines += [
            f"GPU {d.get('id')} ({d.get('device_name')})",
            f"├─ model: {d.get('name')}",
            f"├─ compute capability: {d.get('compute_capability') or '?'}",
            f"├─ total memory: {total:.2f} GB",
            f"├─ used memory: {used:.2f} GB ({percent:.1f}%)",
            f"├─ free memory: {float(d.get('free_memory_gb') or 0.0):.2f} GB",
            f"└─ current tasks: {_tasks(d.get('current_tasks') or {})}",
        ]
    return lines
