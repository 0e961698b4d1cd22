"""runner.devices: the job's device and its CUDA switches, on this host (with or without a GPU)."""

from __future__ import annotations

import pytest
import torch

from runner import devices


def test_cpu_device() -> None:
    d = devices.resolve("cpu")
    assert d.torch_device == torch.device("cpu") and str(d) == "cpu"
    assert not d.is_cuda and not d.pin_memory
    a = torch.randn(4, 4)
    with d.autocast():  # a no-op on the CPU: float32, bit-exact
        product = a @ a
    assert product.dtype == torch.float32 and torch.equal(product, a @ a)
    assert d.to(a) is a


@pytest.mark.parametrize("name", ["cuda", "cuda:0"])
def test_cuda_device(name: str) -> None:
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match=f"device '{name}' requested but no CUDA device is visible"):
            devices.resolve(name)
        return
    d = devices.resolve(name)
    assert d.is_cuda and d.pin_memory and d.torch_device.type == "cuda"
    a = d.to(torch.randn(8, 8))
    assert a.device.type == "cuda"
    with d.autocast():
        assert (a @ a).dtype == torch.float16


@pytest.mark.parametrize("name", ["mps", "meta"])
def test_other_devices_refused(name: str) -> None:
    with pytest.raises(ValueError, match=f"unsupported device '{name}'"):
        devices.resolve(name)
