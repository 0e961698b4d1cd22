"""The jobs through the whole service: a real supervisor and a real uvicorn server on loopback
(tests/support/service.py), driven with the HTTP client like the satellite platform does."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from protocol.events import EPOCH_METRICS
from tests.support import datasets
from tests.support.service import Service


@pytest.fixture(scope="module")
def svc() -> Iterator[Service]:
    # Batch cap raised so that the digits train in few steps; one torch thread (50% of 2 cores).
    with Service(env={"RFUAV_CPU_BATCH_CAP": "32"}) as service:
        yield service


@pytest.mark.timeout(300)
def test_train_then_infer_over_http(svc: Service) -> None:
    data = datasets.digits(svc.home / "data" / "digits", size=16, per_class=70, seed=1)
    client = svc.client
    task = client.start_training(
        "resnet18", 10, str(data["train"]), str(data["val"]), str(svc.home / "runs"), name="http",
        batch_size=16, num_epochs=3, learning_rate=1e-3, image_size=32, device="cpu", seed=3, augment=False,
    )  # fmt: skip
    done = client.wait_for(task["task_id"], timeout=270)
    assert done["status"] == "completed", client.get_logs(task["task_id"])[-3:]
    assert (
        done["progress"] == 100
        and done["current_epoch"] == 3
        and done["total_epochs"] == 3
    )
    metrics = done["latest_metrics"]
    assert set(EPOCH_METRICS) <= set(metrics) and metrics["epoch"] == 3
    assert metrics["best_acc"] >= 90.0
    logs = client.get_logs(task["task_id"])
    stages = [e.get("stage") for e in logs if e.get("stage")]
    assert stages.count("epoch_end") == 3 and stages[-1] == "completed"
    best = torch.load(svc.home / "runs" / "http" / "best.pth", weights_only=True)
    assert best["best_acc"] == pytest.approx(metrics["best_acc"])

    out = svc.home / "runs" / "http"
    inf = client.start_inference(str(out / "config.yaml"), str(out / "best.pth"), str(data["test"]),
                                 save_path=str(svc.home / "results"), name="r", device="cpu")  # fmt: skip
    done = client.wait_for(inf["task_id"], timeout=200)
    assert done["status"] == "completed", client.get_logs(inf["task_id"])[-3:]
    res = done["res"]
    assert {"image", "predictions", "top_class"} <= set(res) and res["summary"][
        "count"
    ] == 140
    results = json.loads((svc.home / "results" / "r" / "results.json").read_text())[
        "results"
    ]
    correct = sum(r["top_class"] == Path(r["image"]).parent.name for r in results)
    assert correct / len(results) >= 0.9


@pytest.mark.timeout(200)
def test_preprocessing_over_http(svc: Service) -> None:
    src = datasets.spectrograms(
        svc.home / "data" / "spec", per_class=6, size=32, seed=2
    )
    client = svc.client
    split = client.split_dataset(
        str(src), str(svc.home / "split"), train_ratio=0.5, val_ratio=0.5, seed=1
    )
    crop = client.crop_images(str(src), str(svc.home / "crop"), 0, 0, 16, 16)
    for t in (split, crop):
        done = client.wait_for(t["task_id"], timeout=150)
        assert done["status"] == "completed" and done["task_type"] == "preprocessing", (
            client.get_logs(t["task_id"])[-3:]
        )
    assert len(list((svc.home / "split" / "train").rglob("*.png"))) == 9
    assert len(list((svc.home / "split" / "val").rglob("*.png"))) == 9
    assert len(list((svc.home / "crop").rglob("*.png"))) == 18
