"""The compute device a job runs on, and the few things that differ between CPU and CUDA.

The supervisor hands the runner ``cpu`` or ``cuda:0`` (after ``CUDA_VISIBLE_DEVICES``). Every
CUDA-specific choice (autocast, pinned memory, non-blocking copies) is decided here so that the
job loops keep one code path.
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Device:
    """A resolved torch device with its CUDA switches."""

    torch_device: torch.device

    @property
    def is_cuda(self) -> bool:
        return self.torch_device.type == "cuda"

    @property
    def pin_memory(self) -> bool:
        """Pinned host memory only pays off when batches are copied to a GPU."""
        return self.is_cuda

    def autocast(self) -> ContextManager[Any]:
        """Mixed precision on CUDA; a no-op on the CPU (bit-exact float32 there)."""
        if self.is_cuda:
            return torch.autocast(device_type="cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def to(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(self.torch_device, non_blocking=self.is_cuda)

    def __str__(self) -> str:
        return str(self.torch_device)


def resolve(name: str) -> Device:
    """``cpu`` or ``cuda[:N]`` → ``Device``. Raises ``RuntimeError`` when CUDA was asked for but
    this process cannot see a GPU (the scheduler should have sent the job to the CPU)."""
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but no CUDA device is visible to the runner")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {name!r}: expected 'cpu' or 'cuda[:N]'")
    return Device(device)
