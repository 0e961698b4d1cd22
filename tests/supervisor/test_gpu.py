"""GPU facts: the no-GPU path for real (this host has no NVML library), and the formatting of
NVML's numbers through the pure seam, fed with plain numbers in NVML's units (bytes, percent,
the driver's CUDA version integer).

The wiring from NVML to the scheduler, the job's CUDA device and ``ps`` runs in a real daemon
that imports a fake ``pynvml`` (``tests/support/fake_nvml``, first on its ``PYTHONPATH``)
describing two GPUs: everything past that import is the real code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from protocol.hardware import summary_lines
from protocol.replies import CommandError
from supervisor.gpu import (
    GB,
    Gpus,
    cuda_version_text,
    device_entry,
    torch_cuda_version,
    torch_version,
)
from tests.support.supervisor import REPO, SupervisorProcess


def _nvml_present() -> bool:
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


HAS_NVML = _nvml_present()


@pytest.mark.skipif(HAS_NVML, reason="this host has NVML; the no-GPU path needs a host without it")
def test_without_nvml_there_is_no_gpu_and_nothing_raises() -> None:
    gpus = Gpus()
    assert gpus.count == 0 and gpus.available is False
    assert gpus.reason is not None and "NVML" in gpus.reason
    usage = {"cpu": {"training": 1, "inference": 0}}
    info = gpus.info(usage)
    assert info == {
        "available": False,
        "count": 0,
        "cuda_version": None,
        "pytorch_version": torch_version(),
        "devices": [],
        "torch_cuda_version": torch_cuda_version(),
        "reason": gpus.reason,
        "cpu_count": os.cpu_count(),
    }
    assert gpus.devices(usage) == []
    assert gpus.free_memory(0) == 0
    assert gpus.pids_memory() == {}
    assert gpus.summary_lines() == [
        f"no GPU ({gpus.reason}): jobs run on the CPU, {os.cpu_count()} cores",
        f"CUDA: driver -, PyTorch built for {torch_cuda_version() or '-'}",
        f"PyTorch: {torch_version()}",
    ]
    gpus.close()


@pytest.mark.skipif(not HAS_NVML, reason="no NVML on this host (no NVIDIA driver): nothing to query")
def test_with_nvml_every_device_has_the_contract_fields() -> None:
    gpus = Gpus()
    info = gpus.info({"cuda:0": {"training": 1}})
    assert info["available"] is (gpus.count > 0)
    for dev in info["devices"]:
        assert set(dev) == {
            "id",
            "device_name",
            "name",
            "compute_capability",
            "total_memory_gb",
            "allocated_memory_gb",
            "cached_memory_gb",
            "free_memory_gb",
            "utilization",
            "current_tasks",
        }
    gpus.close()


def test_torch_version_is_read_without_importing_torch() -> None:
    code = (
        "import sys; from supervisor.gpu import Gpus, torch_cuda_version, torch_version; g = Gpus(); g.info({}); "
        "g.summary_lines(); print(torch_version(), torch_cuda_version()); sys.exit(1 if 'torch' in sys.modules else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    import torch  # here, not in the daemon: the installed version, whatever its build tag

    version, cuda = out.stdout.split()
    assert version.split("+")[0] == torch.__version__.split("+")[0]
    assert cuda == str(torch.version.cuda)  # "None" for a CPU build


@pytest.mark.parametrize(
    ("text", "cuda"),
    [
        ("__version__ = '2.5.1+cu124'\ndebug = False\ncuda: Optional[str] = '12.4'\n", "12.4"),
        ("__version__ = '2.0.1+cu118'\ncuda = '11.8'\ngit_version = 'x'\n", "11.8"),
        ("__version__ = '2.5.1+cpu'\ncuda: Optional[str] = None\nhip: Optional[str] = None\n", None),
        ("__version__ = '2.5.1'\n", None),
    ],
)
def test_torch_cuda_version_from_torch_version_py(text: str, cuda: str | None) -> None:
    assert torch_cuda_version(text) == cuda


# -- the formatting seam, with recorded NVML values -------------------------------------------------
# What nvmlDeviceGetName, GetCudaComputeCapability, GetMemoryInfo (v2, bytes) and
# GetUtilizationRates would return for the contract's example device (an RTX 3090 with 24 GiB,
# 8.5 GiB in use, 15.5 GiB free, 35 % busy).
RTX3090 = {
    "name": "NVIDIA GeForce RTX 3090",
    "capability": (8, 6),
    "total": 25769803776,
    "used": 9126805504,
    "free": 16642998272,
    "reserved": 333447168,
    "utilization": 35,
}


def test_device_entry_formats_recorded_values() -> None:
    entry = device_entry(
        1,
        RTX3090["name"],
        RTX3090["capability"],
        RTX3090["total"],
        RTX3090["used"],  # type: ignore[arg-type]
        RTX3090["free"],
        RTX3090["reserved"],
        RTX3090["utilization"],
        {"training": 1, "inference": 2},  # type: ignore[arg-type]
    )
    assert entry == {
        "id": 1,
        "device_name": "cuda:1",
        "name": "NVIDIA GeForce RTX 3090",
        "compute_capability": "8.6",
        "total_memory_gb": 24.0,
        "allocated_memory_gb": 8.5,
        "cached_memory_gb": 0.31,
        "free_memory_gb": 15.5,
        "utilization": 35.0,
        "current_tasks": {"training": 1, "inference": 2},
    }


def test_device_entry_fills_missing_counts_and_unknown_values() -> None:
    entry = device_entry(0, "Tesla T4", None, 16 * GB, 0, 16 * GB, 0, None, None)
    assert entry["compute_capability"] is None
    assert entry["utilization"] == 0.0
    assert entry["current_tasks"] == {"training": 0, "inference": 0}
    assert entry["free_memory_gb"] == 16.0
    # Other task types the scheduler counts are shown too (additive to the contract).
    entry = device_entry(0, "Tesla T4", (7, 5), 16 * GB, 0, 16 * GB, 0, 3, {"inference": 3, "diagnostic": 1})
    assert entry["current_tasks"] == {"training": 0, "inference": 3, "diagnostic": 1}


def test_cuda_version_and_the_hardware_summary() -> None:
    assert cuda_version_text(12040) == "12.4"
    assert cuda_version_text(11080) == "11.8"
    assert cuda_version_text(13000) == "13.0"
    # The original service's start-up block, item for item, for the contract's example device.
    device = device_entry(0, RTX3090["name"], (8, 6), RTX3090["total"], RTX3090["used"], RTX3090["free"], 0, 35,  # type: ignore[arg-type]
                          {"training": 1, "diagnostic": 2, "preprocessing": 0})  # fmt: skip
    info = {"available": True, "count": 1, "cuda_version": "12.4", "pytorch_version": "2.5.1+cu121",
            "torch_cuda_version": "12.1", "devices": [device]}  # fmt: skip
    assert summary_lines(info) == [
        "GPU available: 1 GPU(s)",
        "CUDA: driver 12.4, PyTorch built for 12.1",
        "PyTorch: 2.5.1+cu121",
        "GPU 0 (cuda:0)",
        "├─ model: NVIDIA GeForce RTX 3090",
        "├─ compute capability: 8.6",
        "├─ total memory: 24.00 GB",
        "├─ used memory: 8.50 GB (35.4%)",
        "├─ free memory: 15.50 GB",
        "└─ current tasks: training=1, inference=0, diagnostic=2",
    ]


# -- NVML → scheduler → the job's device, through a daemon with a fake NVML --------------------------
FAKE_NVML = REPO / "tests" / "support" / "fake_nvml"


def _report(sup: SupervisorProcess, task_id: str) -> dict[str, Any]:
    """The diagnostic job's process report (its CUDA_VISIBLE_DEVICES among others)."""
    found: list[dict[str, Any]] = []

    def reported(task: dict[str, Any]) -> bool:
        found[:] = [e["process"] for e in sup.logs(task_id) if "process" in e]
        return bool(found)

    sup.wait_task(task_id, reported, 60, "process report")
    return found[0]


@pytest.mark.timeout(120)
def test_cuda_goes_to_the_least_loaded_gpu_which_the_job_sees_alone(
    make_supervisor: Callable[..., SupervisorProcess], tmp_path: Path
) -> None:
    procs = tmp_path / "procs.json"
    gib = 1 << 30
    gpus = [
        {"name": "Fake GPU A", "total": 16 * gib, "used": 12 * gib, "free": 4 * gib, "utilization": 90},
        {"name": "Fake GPU B", "total": 16 * gib, "used": 2 * gib, "free": 14 * gib, "utilization": 5},
    ]
    sup = make_supervisor(
        PYTHONPATH=os.pathsep.join([str(FAKE_NVML), str(REPO), os.environ.get("PYTHONPATH", "")]),
        FAKE_NVML=json.dumps({"gpus": gpus, "procs_file": str(procs)}),
    )
    health = sup.call("health")
    assert (health["gpu_available"], health["gpu_count"]) == (True, 2)
    # The start-up hardware summary in the daemon's log: every GPU, its memory and tasks.
    logged = [line.split("hardware: ", 1)[1] for line in sup.log_text().splitlines() if "hardware: " in line]
    assert logged[:3] == ["GPU available: 2 GPU(s)", "CUDA: driver 12.4, PyTorch built for " +
                          (torch_cuda_version() or "-"), f"PyTorch: {torch_version()}"]  # fmt: skip
    assert logged[3:10] == [
        "GPU 0 (cuda:0)", "├─ model: Fake GPU A", "├─ compute capability: 8.6", "├─ total memory: 16.00 GB",
        "├─ used memory: 12.00 GB (75.0%)", "├─ free memory: 4.00 GB", "└─ current tasks: training=0, inference=0",
    ]  # fmt: skip
    assert logged[10:12] == ["GPU 1 (cuda:1)", "├─ model: Fake GPU B"] and len(logged) == 17
    info = sup.call("resources")["gpu_info"]
    assert [(d["device_name"], d["name"], d["free_memory_gb"]) for d in info["devices"]] == [
        ("cuda:0", "Fake GPU A", 4.0), ("cuda:1", "Fake GPU B", 14.0),
    ]  # fmt: skip
    with pytest.raises(CommandError) as err:
        sup.submit(params={}, device="cuda:2")
    assert "does not exist on this host (GPUs cuda:0..cuda:1)" in err.value.message

    job = {"report": True, "sleep": 60}
    # Nothing runs: equal load, so the GPU with the most free memory.
    first = sup.submit(params=job, device="cuda")
    assert _report(sup, first)["cuda_visible_devices"] == "1"
    # cuda:1 has a task now: the least-loaded one, though it has less free memory.
    second = sup.submit(params=job, device="cuda")
    assert _report(sup, second)["cuda_visible_devices"] == "0"
    # One task each: the most free memory again.
    third = sup.submit(params=job, device="cuda")
    assert _report(sup, third)["cuda_visible_devices"] == "1"
    tasks = {t: sup.get(t) for t in (first, second, third)}
    assert [tasks[t]["device"] for t in (first, second, third)] == ["cuda:1", "cuda:0", "cuda:1"]
    for t in (first, second, third):  # no fallback said (a host without cgroups warns of those)
        assert not [
            e for e in sup.logs(t) if e["level"] == "WARNING" and ("GPU" in e["message"] or "CPU" in e["message"])
        ]
    usage = sup.call("resources")
    assert usage["device_usage"]["cuda:1"]["diagnostic"] == 2 and usage["device_usage"]["cuda:0"]["diagnostic"] == 1
    assert [d["current_tasks"]["diagnostic"] for d in usage["gpu_info"]["devices"]] == [1, 2]

    # ps: each runner's GPU memory as NVML lists it, summed over the GPUs.
    pids = {t: tasks[t]["pid"] for t in tasks}
    procs.write_text(json.dumps({
        "0": {"compute": [[pids[second], 100 << 20], [pids[first], 1 << 20]], "graphics": []},
        "1": {"compute": [[pids[first], 300 << 20]], "graphics": [[pids[third], None]]},
    }))  # fmt: skip
    by_task = {r["task_id"]: r["processes"][0] for r in sup.call("ps")["runners"]}
    assert {t: (by_task[t]["pid"], by_task[t]["gpu_memory"]) for t in tasks} == {
        first: (pids[first], 301 << 20), second: (pids[second], 100 << 20), third: (pids[third], 0),
    }  # fmt: skip

    for t in tasks:
        sup.call("cancel", task_id=t)
    for t in tasks:
        assert sup.wait_final(t)["status"] == "cancelled"
