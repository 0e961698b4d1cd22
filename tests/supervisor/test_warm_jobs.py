"""Real jobs in the start mode users get by default: forked from the supervisor's preloaded fork
server (torch, torchvision, albumentations, OpenCV imported before the fork), through a real
daemon — a training (resnet18 at 32x32, one epoch), an inference with its weights, and an
augmentation (albumentations and OpenCV threads in a forked process).

One warm daemon serves the module; the training and the augmentation run side by side. Each
task must say it started warm, and (on a host with cgroups) ran confined.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from protocol.events import EPOCH_METRICS
from tests.support import datasets
from tests.support.cgroups import assert_every_task_was_confined
from tests.support.supervisor import SupervisorProcess

CLASSES = [str(i) for i in range(10)]
METHODS = ["GaussNoise", "ColorJitter"]


class Warm:
    """The module's daemon, its data and the tasks submitted to it."""

    def __init__(self, sup: SupervisorProcess) -> None:
        self.sup = sup
        self.home = sup.home
        # Inside RFUAV_HOME: the default (and only) data root.
        self.digits = datasets.digits(self.home / "data" / "digits", size=16, per_class=20, seed=0)
        self.spectro = datasets.spectrograms(self.home / "data" / "spectro", per_class=3, size=32, seed=0)
        self.runs = self.home / "runs"
        self.tasks: dict[str, str] = {}

    def submit(self, job: str, params: dict[str, Any]) -> str:
        task_id = self.sup.submit(job, params, device="cpu")
        self.tasks[job] = task_id
        return task_id

    def completed(self, job: str, timeout: float) -> dict[str, Any]:
        """Wait for ``job``'s task to end; it must have completed, started warm."""
        task_id = self.tasks[job]
        task = self.sup.wait_final(task_id, timeout=timeout)
        events = self.sup.logs(task_id)
        tail = "\n".join(e["message"][-1500:] for e in events[-4:])
        assert task["status"] == "completed", f"{job}: {task['message']}\n{tail}\n{self.sup.log_text()[-3000:]}"
        assert any(e["source"] == "supervisor" and e["message"].startswith("started on cpu") for e in events)
        started = next(e["message"] for e in events if e["message"].startswith("started on cpu"))
        assert started.endswith(", warm start)"), started
        assert task["progress"] == 100 and task["exit_code"] == 0
        return task


@pytest.fixture(scope="module")
def warm() -> Iterator[Warm]:
    # Batch cap raised so that the digits train in few steps; one torch thread (half of 2 cores).
    sup = SupervisorProcess(env={"RFUAV_START_MODE": "warm", "RFUAV_CPU_BATCH_CAP": "32"})
    sup.start()
    try:
        world = Warm(sup)
        world.submit("training", {
            "model": "resnet18", "num_classes": 10, "train_path": str(world.digits["train"]),
            "val_path": str(world.digits["val"]), "save_path": str(world.runs), "name": "warm", "batch_size": 32,
            "num_epochs": 1, "learning_rate": 1e-3, "image_size": 32, "pretrained": False, "seed": 3, "augment": False,
        })  # fmt: skip
        world.submit("augment", {
            "dataset_path": str(world.spectro), "output_path": str(world.home / "augmented"), "methods": METHODS,
            "copies": 1, "seed": 3,
        })  # fmt: skip
        yield world
        assert_every_task_was_confined(sup)
    finally:
        sup.close()


@pytest.mark.timeout(300)
def test_training_forked_warm_completes_with_its_artifacts(warm: Warm) -> None:
    task = warm.completed("training", timeout=280)
    assert (task["current_epoch"], task["total_epochs"]) == (1, 1)
    assert set(EPOCH_METRICS) <= set(task["latest_metrics"]) and task["latest_metrics"]["epoch"] == 1
    stages = [e.get("stage") for e in warm.sup.logs(warm.tasks["training"]) if e.get("stage")]
    assert stages.count("epoch_end") == 1 and stages[-1] == "completed"
    out = warm.runs / "warm"
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert (config["model"], config["class_names"], config["image_size"]) == ("resnet18", CLASSES, 32)
    last = torch.load(out / "last.pth", weights_only=True)
    assert (last["epoch"], last["model_name"], last["num_classes"]) == (1, "resnet18", 10)
    best = torch.load(out / "best.pth", weights_only=True)
    assert best["best_acc"] == pytest.approx(task["latest_metrics"]["best_acc"])


@pytest.mark.timeout(300)
def test_inference_forked_warm_classifies_every_image(warm: Warm) -> None:
    warm.completed("training", timeout=280)
    out = warm.runs / "warm"
    source = warm.digits["test"]
    images = sorted(p.relative_to(source).as_posix() for p in source.rglob("*.png"))
    warm.submit("inference", {
        "cfg_path": str(out / "config.yaml"), "weight_path": str(out / "best.pth"), "source_path": str(source),
        "save_path": str(warm.home / "results"), "name": "warm",
    })  # fmt: skip
    task = warm.completed("inference", timeout=200)
    assert task["res"]["summary"]["count"] == len(images) == 40
    results = json.loads((warm.home / "results" / "warm" / "results.json").read_text())["results"]
    assert sorted(Path(r["image"]).relative_to(source).as_posix() for r in results) == images
    for r in results:
        assert r["top_class"] in CLASSES and len(r["predictions"]) == 5
        assert sum(p["probability"] for p in r["predictions"]) <= 1.0 + 1e-6


@pytest.mark.timeout(300)
def test_augmentation_forked_warm_writes_every_copy(warm: Warm) -> None:
    warm.completed("augment", timeout=280)
    source = sorted(p.relative_to(warm.spectro).as_posix() for p in warm.spectro.rglob("*.png"))
    written = sorted(
        p.relative_to(warm.home / "augmented").as_posix() for p in (warm.home / "augmented").rglob("*.png")
    )
    expected = sorted(source + [f"{s[:-4]}_{m}_1.png" for s in source for m in METHODS])
    assert written == expected and len(source) == 9
