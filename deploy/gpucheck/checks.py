"""The checks, in order, against one running service; each returns its PASS detail or raises
``CheckFailed`` with what it saw."""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gpucheck.host import CLASSES, IMAGE_SIZE, JOB_TIMEOUT, SPLITS, CheckFailed, nvml_pids
from gpucheck.service import Service


class Checks:
    """Runs the checks in order against one service and prints a line for each."""

    def __init__(self, svc: Service, data: dict[str, Path], facts: dict[str, Any]) -> None:
        from web.client import RFUAVClient

        self.svc, self.data, self.facts = svc, data, facts
        self.client = RFUAVClient(svc.base_url, timeout=30.0)
        self.failures = 0
        self.model_dir = svc.home / "models" / "gpu-check"
        self.trained: dict[str, Any] | None = None  # the completed training task

    def run(self, name: str, check: Callable[[], str]) -> bool:
        try:
            detail = check()
        except Exception as exc:  # noqa: BLE001 - any error is this check's failure
            self.failures += 1
            why = str(exc) if isinstance(exc, CheckFailed) else f"{type(exc).__name__}: {exc}"
            print(f"FAIL {name}: {why}", flush=True)
            return False
        print(f"PASS {name}: {detail}", flush=True)
        return True

    # -- helpers --------------------------------------------------------------------------
    def finished(self, task: dict[str, Any], want: str = "completed") -> dict[str, Any]:
        """Follow the task to its end; CheckFailed unless it ended ``want`` (ERROR events shown)."""
        done = self.client.wait_for(task["task_id"], timeout=JOB_TIMEOUT)
        if done["status"] != want:
            errors = [e["message"] for e in self.client.get_logs(task["task_id"]) if e.get("level") == "ERROR"]
            stderr = self.svc.home / "tasks" / task["task_id"] / "stderr.log"
            tail = stderr.read_text(errors="replace")[-1500:] if stderr.is_file() else ""
            raise CheckFailed(
                f"task {task['task_id']} ended {done['status']}: {done['message']} {errors[-3:]}"
                + (f"\n--- its stderr.log ---\n{tail}" if tail.strip() else "")
            )
        return done

    def gpu_index(self, task: dict[str, Any]) -> int:
        device = str(task.get("device"))
        if not device.startswith("cuda:") or not 0 <= int(device[5:]) < self.facts["count"]:
            raise CheckFailed(f"task {task['task_id']} was placed on {device!r}, not on one of the GPUs")
        return int(device[5:])

    def message(self, task_id: str, start: str) -> dict[str, Any]:
        for event in self.client.get_logs(task_id):
            if str(event.get("message", "")).startswith(start):
                return event
        raise CheckFailed(f"task {task_id}: no event starting {start!r}")

    def training(self, epochs: int, **fields: Any) -> dict[str, Any]:
        return self.client.start_training(
            model="resnet18", num_classes=len(CLASSES), train_path=str(self.data["train"]),
            val_path=str(self.data["val"]), save_path=str(self.model_dir), num_epochs=epochs, batch_size=16,
            image_size=IMAGE_SIZE, pretrained=False, seed=0, **fields,
        )  # fmt: skip

    # -- checks ---------------------------------------------------------------------------
    def nvml(self) -> str:
        import torch

        facts, gpu, health = self.facts, self.client.get_gpu_info(), self.client.health()
        problems = []
        if gpu.get("count") != facts["count"] or len(gpu.get("devices") or []) != facts["count"]:
            problems.append(
                f"count {gpu.get('count')} / {len(gpu.get('devices') or [])} devices, NVML here {facts['count']}"
            )
        if gpu.get("cuda_version") != facts["cuda"]:
            problems.append(f"cuda_version {gpu.get('cuda_version')!r}, NVML here {facts['cuda']!r}")
        for mine, theirs in zip(facts["devices"], gpu.get("devices") or []):
            if theirs.get("name") != mine["name"] or abs(theirs.get("total_memory_gb", 0) - mine["total_gb"]) > 0.01:
                problems.append(f"{theirs.get('device_name')}: {theirs.get('name')} {theirs.get('total_memory_gb')} GB")
        status = health.get("resource_status") or {}
        if status.get("gpu_available") is not True or status.get("gpu_count") != facts["count"]:
            problems.append(f"health resource_status {status}")
        if not os.environ.get("CUDA_VISIBLE_DEVICES") and torch.cuda.device_count() != facts["count"]:
            problems.append(f"torch.cuda.device_count() {torch.cuda.device_count()}")
        if problems:
            raise CheckFailed("; ".join(problems))
        names = ", ".join(f"{d['device_name']} {d['name']} {d['total_memory_gb']} GB" for d in gpu["devices"])
        return (
            f"{facts['count']} GPU(s) ({names}), driver CUDA {gpu['cuda_version']}, torch {gpu.get('pytorch_version')}"
        )

    def refused(self) -> str:
        from web.client import RFUAVError

        missing = f"cuda:{self.facts['count']}"
        try:
            task = self.training(1, device=missing)
        except RFUAVError as exc:
            if exc.code == 400 and missing in exc.msg:
                return f"{missing} -> 400 {exc.msg!r}"
            raise CheckFailed(f"{missing} -> {exc.code} {exc.msg!r} (want 400 naming the device)") from None
        self.client.cancel_task(task["task_id"])
        raise CheckFailed(f"{missing} was accepted (task {task['task_id']}, device {task.get('device')})")

    def named_gpu(self) -> str:
        want = f"cuda:{self.facts['count'] - 1}"
        done = self.finished(self.client.start_diagnostic(device=want, events=1))
        if done.get("device") != want:
            raise CheckFailed(f"asked for {want}, ran on {done.get('device')!r}")
        return f"diagnostic job asked for {want} ran on {done['device']}"

    def visible_devices(self) -> str:
        seen = {}
        for device in ("cuda", "cpu"):
            spec = {"task_type": "diagnostic", "job": "diagnostic", "params": {"report": True}, "device": device}
            task = self.finished(self.svc.control("submit", tasks=[spec])["tasks"][0])
            report = self.message(task["task_id"], "process report").get("process") or {}
            value = report.get("cuda_visible_devices")
            want = str(self.gpu_index(task)) if device == "cuda" else ""
            if value != want:
                raise CheckFailed(f"job on {task['device']} saw CUDA_VISIBLE_DEVICES={value!r}, want {want!r}")
            seen[task["device"]] = value
        return ", ".join(f"job on {dev} saw CUDA_VISIBLE_DEVICES={val!r}" for dev, val in seen.items())

    def train(self) -> str:
        task = self.finished(self.training(1, device="cuda"))
        index = self.gpu_index(task)
        start = self.message(task["task_id"], "training resnet18 on ")
        if not start["message"].startswith("training resnet18 on cuda:0 "):
            raise CheckFailed(f"the runner says {start['message'][:80]!r}")
        ends = [e for e in self.client.get_logs(task["task_id"]) if e.get("stage") == "epoch_end"]
        if len(ends) != 1:
            raise CheckFailed(f"{len(ends)} epoch_end events, want 1")
        m = ends[0]["metrics"]
        if not all(math.isfinite(float(m[k])) for k in ("train_loss", "val_loss", "val_acc")):
            raise CheckFailed(f"non-finite metrics {m}")
        missing = [n for n in ("best.pth", "last.pth", "config.yaml") if not (self.model_dir / n).is_file()]
        if missing:
            raise CheckFailed(f"missing artifacts {missing} in {self.model_dir}")
        self.trained = task
        return (
            f"'cuda' placed on cuda:{index}, runner trained on cuda:0, 1 epoch: train_loss {m['train_loss']:.3f}, "
            f"val_loss {m['val_loss']:.3f}, {m.get('train_images_per_s', 0):.0f} img/s; best.pth, config.yaml written"
        )

    def amp(self) -> str:
        task = self.trained
        if task is None:
            raise CheckFailed("no completed training job to read")
        amp = [e["amp"] for e in self.client.get_logs(task["task_id"]) if isinstance(e.get("amp"), dict)]
        if not amp:
            raise CheckFailed("the training job reported no mixed precision (no 'amp' event from runner/training.py)")
        if amp[0].get("autocast_dtype") != "float16" or amp[0].get("grad_scaler_enabled") is not True:
            raise CheckFailed(f"amp event {amp[0]}")
        return f"logits {amp[0]['autocast_dtype']} under autocast, GradScaler enabled (scale {amp[0]['grad_scale']:g})"

    def infer(self) -> str:
        import orjson

        if self.trained is None:
            raise CheckFailed("no trained model (training on cuda failed)")
        task = self.client.start_inference(
            cfg_path=str(self.model_dir / "config.yaml"), weight_path=str(self.model_dir / "best.pth"),
            source_path=str(self.data["test"]), device="cuda", save_path=str(self.svc.home / "results"),
        )  # fmt: skip
        done = self.finished(task)
        index = self.gpu_index(done)
        start = self.message(task["task_id"], "inference with resnet18")
        if " on cuda:0: " not in start["message"]:
            raise CheckFailed(f"the runner says {start['message'][:100]!r}")
        results = orjson.loads((self.svc.home / "results" / "results.json").read_bytes())
        rows = results.get("results", results) if isinstance(results, dict) else results
        want = SPLITS["test"] * len(CLASSES)
        good = [r for r in rows if isinstance(r, dict) and r.get("top_class") in CLASSES]
        if len(good) != want:
            raise CheckFailed(f"{len(good)} classified images in results.json, want {want}")
        return f"'cuda' placed on cuda:{index}, runner on cuda:0, {want} images classified, results.json complete"

    def deploy(self) -> str:
        """The trained model deployed with ``device: cuda``: its replicas on a GPU (they see it as
        cuda:0), every test image predicted as the inference job classified it, then undeployed."""
        import orjson

        if self.trained is None:
            raise CheckFailed("no trained model (training on cuda failed)")
        name = "gpu-check"
        self.client.deploy(name, from_task=self.trained["task_id"], device="cuda", replicas=1)
        try:
            dep = self.client.wait_deployment(name, timeout=JOB_TIMEOUT)
            if dep["status"] != "ready":
                raise CheckFailed(f"deployment {dep['status']}: {dep.get('reason', '')}")
            index = self.gpu_index({"task_id": dep["task_id"], "device": dep["device"]})
            if [r["device"] for r in dep["replicas"]] != [f"cuda:{index}"]:
                raise CheckFailed(f"replicas on {[r['device'] for r in dep['replicas']]}, deployment on cuda:{index}")
            results = orjson.loads((self.svc.home / "results" / "results.json").read_bytes())["results"]
            if not results:
                raise CheckFailed("results.json lists no image to compare with")
            worst = 0.0
            round_trips: list[float] = []
            for row in results:
                start = time.perf_counter()
                answer = self.client.predict(name, path=row["image"])
                round_trips.append((time.perf_counter() - start) * 1e3)
                if answer["class_name"] != row["top_class"]:
                    raise CheckFailed(f"{row['image']}: deployment says {answer['class_name']}, job {row['top_class']}")
                for p in row["predictions"]:
                    worst = max(worst, abs(answer["prediction"][p["class_id"]] - p["probability"]))
            if worst > 1e-3:
                raise CheckFailed(f"probabilities differ from the inference job's by up to {worst:.2g}")
            return (
                f"'cuda' placed on cuda:{index}, {len(results)} images predicted as the inference job did "
                f"(probabilities within {worst:.1g}), round trip p50 {statistics.median(round_trips):.1f} ms"
            )
        finally:
            self.client.undeploy(name)

    def ps_gpu_memory(self) -> str:
        from web.client import RFUAVError

        if self.trained is None:
            raise CheckFailed("training on cuda does not work, nothing to look at")
        task = self.training(10_000, device="cuda", name="ps")
        task_id, deadline, last = task["task_id"], time.monotonic() + 60.0, "no runner yet"
        try:
            while time.monotonic() < deadline:
                now = self.client.get_task(task_id)
                if now["status"] not in ("pending", "running"):
                    raise CheckFailed(f"job ended {now['status']} ({now['message']}) before ps showed GPU memory")
                if (now.get("current_epoch") or 0) >= 2:  # the model has long been on the GPU by now
                    deadline = 0.0
                runner = next((r for r in self.client.runners()["runners"] if r["task_id"] == task_id), None)
                if runner is not None:
                    proc: dict[str, Any] = next((p for p in runner["processes"] if p["pid"] == runner["pid"]), {})
                    used = proc.get("gpu_memory")
                    last = f"runner pid {runner['pid']}: gpu_memory {used!r}"
                    if isinstance(used, int) and used > 0:
                        index = self.gpu_index(now)
                        listed = nvml_pids(index)
                        if runner["pid"] not in listed:
                            raise CheckFailed(
                                f"ps says {used} bytes but NVML lists pids {sorted(listed)} on cuda:{index}"
                            )
                        return (
                            f"ps: runner pid {runner['pid']} uses {used / 2**20:.0f} MiB on cuda:{index} (NVML agrees)"
                        )
                time.sleep(0.25)  # poll: the job needs a moment to touch the GPU
            index = self.gpu_index(self.client.get_task(task_id))
            raise CheckFailed(f"no GPU memory in ps ({last}) after 2 epochs or 60 s; NVML lists {nvml_pids(index)}")
        finally:
            try:
                self.client.cancel_task(task_id)
                self.client.wait_for(task_id, timeout=60.0)
            except (RFUAVError, TimeoutError) as exc:
                print(f"gpu-check: cancelling the ps job {task_id}: {exc}", flush=True)
