"""This machine's GPUs as NVML and torch see them, and the tiny synthetic ImageFolder data set.

Nothing here imports torch or NVML at module level: ``no_gpu_reason`` must answer quickly and
safely on a machine without either.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CLASSES = ("hline", "vline", "diagonal")
SPLITS = {"train": 12, "val": 4, "test": 4}  # images per class
IMAGE_SIZE = 32
JOB_TIMEOUT = 150.0


class CheckFailed(Exception):
    """A check's claim does not hold; the message says what was seen."""


def no_gpu_reason() -> str | None:
    """Why this machine has no usable GPU, or None when it has one (NVML and torch agree)."""
    try:
        import pynvml
    except ImportError as exc:
        return f"nvidia-ml-py is not installed ({exc})"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:  # NVMLError_LibraryNotFound: no driver on this machine
        return f"NVML unavailable ({exc})"
    try:
        count = int(pynvml.nvmlDeviceGetCount())
    except pynvml.NVMLError as exc:
        return f"NVML device count failed ({exc})"
    finally:
        pynvml.nvmlShutdown()
    if count == 0:
        return "NVML reports no GPU"
    import torch

    if not torch.cuda.is_available():
        return f"NVML sees {count} GPU(s) but torch.cuda.is_available() is False (torch {torch.__version__})"
    return None


def nvml_facts() -> dict[str, Any]:
    """What NVML says here: count, driver CUDA version, per GPU name and total memory (GB)."""
    import pynvml

    pynvml.nvmlInit()
    try:
        version = int(pynvml.nvmlSystemGetCudaDriverVersion())
        devices = []
        for index in range(int(pynvml.nvmlDeviceGetCount())):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
            total = int(pynvml.nvmlDeviceGetMemoryInfo(handle).total)
            devices.append(
                {"name": name.decode() if isinstance(name, bytes) else str(name), "total_gb": total / 1024**3}
            )
        return {"count": len(devices), "cuda": f"{version // 1000}.{(version % 1000) // 10}", "devices": devices}
    finally:
        pynvml.nvmlShutdown()


def nvml_pids(index: int) -> dict[int, int]:
    """``{pid: used bytes or -1}`` of the compute processes NVML lists on GPU ``index``."""
    import pynvml

    pynvml.nvmlInit()
    try:
        procs = pynvml.nvmlDeviceGetComputeRunningProcesses(pynvml.nvmlDeviceGetHandleByIndex(index))
        return {int(p.pid): p.usedGpuMemory if isinstance(p.usedGpuMemory, int) else -1 for p in procs}
    finally:
        pynvml.nvmlShutdown()


def make_images(root: Path) -> dict[str, Path]:
    """``root/<split>/<class>/<n>.png``: one bright stroke per image on noise, a class per
    direction (numpy + OpenCV, the reader the runner uses)."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    out = {}
    for split, count in SPLITS.items():
        out[split] = root / split
        for kind in CLASSES:
            (out[split] / kind).mkdir(parents=True, exist_ok=True)
            for n in range(count):
                img = rng.normal(40, 15, (IMAGE_SIZE, IMAGE_SIZE, 3)).clip(0, 255).astype(np.uint8)
                at = int(rng.integers(4, IMAGE_SIZE - 4))
                if kind == "hline":
                    img[at - 1 : at + 1, :] = 230
                elif kind == "vline":
                    img[:, at - 1 : at + 1] = 230
                else:
                    idx = np.arange(IMAGE_SIZE)
                    img[idx, idx] = 230
                if not cv2.imwrite(str(out[split] / kind / f"{n:03d}.png"), img):
                    raise OSError(f"cannot write {out[split] / kind}")
    return out
