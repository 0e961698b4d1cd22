"""``make gpu-check`` (``deploy/gpu_check.py``): on a machine without a GPU it says so, claims
nothing and exits 0; on one with a GPU every check passes (that run takes minutes)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "gpu_check.py"


def _no_gpu_reason() -> str | None:
    """The script's own answer (``deploy/gpucheck/host.py`` imports nothing of the package)."""
    spec = importlib.util.spec_from_file_location("gpucheck_host", REPO / "deploy" / "gpucheck" / "host.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    reason: str | None = module.no_gpu_reason()
    return reason


NO_GPU = _no_gpu_reason()


def _run(timeout: float) -> tuple[int, list[str], str]:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT)], cwd=str(REPO), capture_output=True, text=True, timeout=timeout, check=False
    )
    return proc.returncode, proc.stdout.splitlines(), proc.stderr


@pytest.mark.skipif(NO_GPU is None, reason="this machine has a GPU: the full check runs instead")
def test_without_a_gpu_it_says_so_and_claims_nothing() -> None:
    code, lines, stderr = _run(timeout=120)
    assert code == 0, (lines, stderr)
    assert any(line.startswith("gpu-check: no GPU present (") for line in lines), lines
    assert not [line for line in lines if line.startswith(("PASS ", "FAIL ", "SKIP "))], lines


@pytest.mark.slow
@pytest.mark.timeout(420)
@pytest.mark.skipif(NO_GPU is not None, reason=f"no GPU here: {NO_GPU}")
def test_on_a_gpu_every_check_passes() -> None:
    code, lines, stderr = _run(timeout=400)
    failed = [line for line in lines if line.startswith("FAIL ")]
    assert code == 0 and not failed, "\n".join(lines) + "\n" + stderr[-4000:]
    passed = {line[5:].split(":", 1)[0] for line in lines if line.startswith("PASS ")}
    assert passed >= {
        "nvml", "device cuda:N refused", "device cuda:N", "CUDA_VISIBLE_DEVICES", "training on cuda",
        "training autocast+GradScaler", "inference on cuda", "deployment on cuda", "ps gpu memory", "service stop",
    }, lines  # fmt: skip
