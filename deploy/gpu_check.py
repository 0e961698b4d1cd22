#!/usr/bin/env python3
"""``make gpu-check``: prove every GPU path of the service on a machine with an NVIDIA GPU.

Starts the whole service itself (``python -m supervisor all``: a temp ``RFUAV_HOME`` under /tmp,
a free loopback port, ``RFUAV_DIAGNOSTIC=1``), makes a tiny synthetic ImageFolder data set,
runs the checks below, stops the service with SIGTERM and exits non-zero when any check failed.
One line per check: ``PASS name: detail``, ``FAIL name: detail`` or ``SKIP name: why``.

- ``nvml``: the service's ``/api/v2/resources/gpu`` and ``/api/v1/health`` agree with NVML read
  here (count, names, total memory, driver CUDA version) and with ``torch.cuda``.
- ``device cuda:N refused``: a training request for a GPU one past the last is answered 400.
- ``device cuda:N``: a diagnostic job asked for the last GPU runs there.
- ``CUDA_VISIBLE_DEVICES``: a diagnostic job's own process report (submitted on the control
  socket: the HTTP schema does not take ``report``) shows the index of the GPU the supervisor
  chose for ``cuda``, and ``""`` for a job on the CPU.
- ``training on cuda``: resnet18, 32x32, 1 epoch with ``device: cuda``: placed on a GPU, the
  runner says it trains on ``cuda:0``, the epoch's losses are finite, best.pth and config.yaml.
- ``training autocast+GradScaler``: the job's ``amp`` event (logits float16 under autocast, an
  enabled GradScaler after its first step).
- ``inference on cuda``: the trained model over the test images, ``results.json`` complete.
- ``deployment on cuda``: the trained model deployed with ``device: cuda`` (one replica on the
  GPU the scheduler chose, seeing it as cuda:0) predicts every test image as the inference job
  classified it (probabilities within 1e-3: both run the same forward step); then undeployed.
- ``ps gpu memory``: ``/api/v2/runners`` shows GPU memory for a running training job's pid,
  and NVML lists that pid on the job's GPU; the job is then cancelled.
- ``service stop``: SIGTERM to ``rfuavd all`` ends it with status 0.

Without a GPU (NVML absent, no device, or ``torch.cuda.is_available()`` false) it says so and
exits 0 having claimed nothing. Works with the project installed or from a checkout with its
dependencies on ``PYTHONPATH`` (the repository root is put on the path here). ``GPU_CHECK_KEEP=1``
keeps the temp home (the service log is in it).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
for path in (HERE.parent, HERE):  # the repository (protocol, web, ...) and gpucheck
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from gpucheck.host import CheckFailed, make_images, no_gpu_reason, nvml_facts  # noqa: E402


def main() -> int:
    reason = no_gpu_reason()
    if reason is not None:
        print(f"gpu-check: no GPU present ({reason}): nothing checked", flush=True)
        return 0
    from gpucheck.checks import Checks  # the rest needs the service's dependencies
    from gpucheck.service import Service

    started = time.monotonic()
    facts = nvml_facts()
    home = Path(tempfile.mkdtemp(prefix="rfuav-gpu-check-", dir="/tmp"))
    svc = Service(home)
    print(f"gpu-check: {facts['count']} GPU(s); service on {svc.base_url}, home {home}", flush=True)
    failures = 0
    try:
        data = make_images(home / "data")
        try:
            svc.start()
        except CheckFailed as exc:
            raise CheckFailed(f"service start: {exc}") from None
        checks = Checks(svc, data, facts)
        try:
            checks.run("nvml", checks.nvml)
            checks.run("device cuda:N refused", checks.refused)
            checks.run("device cuda:N", checks.named_gpu)
            checks.run("CUDA_VISIBLE_DEVICES", checks.visible_devices)
            checks.run("training on cuda", checks.train)
            checks.run("training autocast+GradScaler", checks.amp)
            checks.run("inference on cuda", checks.infer)
            checks.run("deployment on cuda", checks.deploy)
            checks.run("ps gpu memory", checks.ps_gpu_memory)
        finally:
            checks.client.close()
            failures += checks.failures
        failures += 0 if checks.run("service stop", svc.stop) else 1
    except Exception as exc:  # noqa: BLE001 - the data or the service could not be set up
        print(f"FAIL setup: {exc if isinstance(exc, CheckFailed) else repr(exc)}", flush=True)
        failures += 1
    finally:
        if svc.proc is not None and svc.proc.poll() is None:  # a failed start: no clean stop to check
            svc.kill_tree()
        if failures:
            print(f"--- service log (last lines, {svc.log_path}) ---\n{svc.log_tail()}", file=sys.stderr, flush=True)
        if os.environ.get("GPU_CHECK_KEEP") != "1":
            shutil.rmtree(home, ignore_errors=True)
    verdict = "FAILED" if failures else "all GPU checks passed"
    print(f"gpu-check: {verdict} ({failures} failure(s)) in {time.monotonic() - started:.0f} s", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
