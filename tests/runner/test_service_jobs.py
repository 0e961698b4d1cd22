"""The jobs through the whole service: a real supervisor and a real uvicorn server on loopback
(tests/support/service.py), driven with the HTTP client like the satellite platform does.

The service may reach loopback URLs (RFUAV_URL_ALLOW_LOOPBACK=1): the fake satellite listens
on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import yaml

from protocol.events import EPOCH_METRICS, TRAINING_SUMMARY_METRICS, VALIDATION_METRICS, is_step
from runner import models
from tests.runner.satellite import Satellite
from tests.support import datasets
from tests.support.service import Service


@pytest.fixture(scope="module")
def svc() -> Iterator[Service]:
    # Batch cap raised so that the digits train in few steps; one torch thread (50% of 2 cores).
    env = {"RFUAV_CPU_BATCH_CAP": "32", "RFUAV_URL_ALLOW_LOOPBACK": "1", "RFUAV_UPLOAD_RETRIES": "0"}
    with Service(env=env) as service:
        yield service


@pytest.mark.timeout(300)
def test_train_then_infer_over_http(svc: Service) -> None:
    data = datasets.digits(svc.home / "data" / "digits", size=16, per_class=70, seed=1)
    client = svc.client
    task = client.start_training(
        "resnet18", 10, str(data["train"]), str(data["val"]), str(svc.home / "runs"), name="http",
        batch_size=16, num_epochs=3, learning_rate=1e-3, image_size=32, device="cpu", seed=3, augment=False,
    )  # fmt: skip
    seen = _read_like_the_original(svc.base_url + f"/api/v2/training/{task['task_id']}/logs")
    done = client.wait_for(task["task_id"], timeout=270)
    assert done["status"] == "completed", client.get_logs(task["task_id"])[-3:]
    _check_epoch_events(seen, epochs=3)
    assert done["progress"] == 100 and done["current_epoch"] == 3 and done["total_epochs"] == 3
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
    assert {"image", "predictions", "top_class"} <= set(res) and res["summary"]["count"] == 140
    results = json.loads((svc.home / "results" / "r" / "results.json").read_text())["results"]
    correct = sum(r["top_class"] == Path(r["image"]).parent.name for r in results)
    assert correct / len(results) >= 0.9


def _read_like_the_original(url: str) -> list[dict[str, Any]]:
    """The SSE stream, live to its end, read as the original's README does: the ``data: `` lines."""
    events = []
    with httpx.stream("GET", url, timeout=60.0) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    return events


def _check_epoch_events(events: list[dict[str, Any]], epochs: int) -> None:
    """Per epoch: one ``training`` summary and one ``validation`` event with exactly the
    original's metric keys and the numbers of that epoch's ``epoch_end``; the steps unchanged."""
    assert events[-1]["kind"] == "status" and events[-1]["status"] == "completed"
    training = [e for e in events if e.get("stage") == "training"]
    steps = [e for e in training if is_step(e)]
    assert steps and all(set(e["metrics"]) >= {"loss"} and "train_loss" not in e["metrics"] for e in steps)
    summaries = [e for e in training if not is_step(e)]
    validations = [e for e in events if e.get("stage") == "validation"]
    ends = [e for e in events if e.get("stage") == "epoch_end"]
    assert len(summaries) == len(validations) == len(ends) == epochs
    for epoch, (summary, val, end) in enumerate(zip(summaries, validations, ends, strict=True), 1):
        assert sorted(summary["metrics"]) == sorted(TRAINING_SUMMARY_METRICS) == ["epoch", "train_acc", "train_loss"]
        assert sorted(val["metrics"]) == sorted(["epoch", "val_loss", "val_acc", "macro_f1", "mAP", "top1_acc"])
        assert summary["metrics"]["epoch"] == val["metrics"]["epoch"] == end["epoch"] == epoch
        for key in ("train_loss", "train_acc"):
            assert summary["metrics"][key] == end["metrics"][key], key
        for key in VALIDATION_METRICS:
            assert val["metrics"][key] == end["metrics"][key], key
        assert 0 <= summary["metrics"]["train_acc"] <= 100 and 0 <= val["metrics"]["val_acc"] <= 100
        assert summary["seq"] < val["seq"] < end["seq"]


@pytest.mark.timeout(200)
def test_preprocessing_over_http(svc: Service) -> None:
    src = datasets.spectrograms(svc.home / "data" / "spec", per_class=6, size=32, seed=2)
    client = svc.client
    split = client.split_dataset(str(src), str(svc.home / "split"), train_ratio=0.5, val_ratio=0.5, seed=1)
    crop = client.crop_images(str(src), str(svc.home / "crop"), 0, 0, 16, 16)
    for t in (split, crop):
        done = client.wait_for(t["task_id"], timeout=150)
        assert done["status"] == "completed" and done["task_type"] == "preprocessing", client.get_logs(t["task_id"])[
            -3:
        ]
    assert len(list((svc.home / "split" / "train").rglob("*.png"))) == 9
    assert len(list((svc.home / "split" / "val").rglob("*.png"))) == 9
    assert len(list((svc.home / "crop").rglob("*.png"))) == 18


SECRET = "sat-tok-58d1c0ffee"


@pytest.mark.timeout(200)
def test_upload_token_validated_and_never_leaked(svc: Service) -> None:
    """A token that is no valid header value is a 400 naming the field (and not echoed). A valid
    one goes web → supervisor → runner → the satellite, which misbehaves and quotes it in its
    reason phrase: it reaches none of the task's message, the task list, the logs, the SSE
    stream, the service's logs or the task's files."""
    spec = datasets.spectrograms(svc.home / "data" / "tok", per_class=2, size=32, seed=4)
    run = svc.home / "models" / "tok"
    run.mkdir(parents=True)
    torch.save(models.build("resnet18", 3).state_dict(), run / "w.pth")
    (run / "config.yaml").write_text(yaml.safe_dump({"model": "resnet18", "num_classes": 3, "image_size": 32,
                                                     "class_names": ["carrier", "chirp", "hopping"]}))  # fmt: skip
    sat = Satellite(fail_first=1000, echo_header="Authorization")
    body = {"cfg_path": str(run / "config.yaml"), "weight_path": str(run / "w.pth"), "source_path": str(spec),
            "device": "cpu", "enable_upload": True, "upload_url": sat.url}  # fmt: skip
    try:
        with httpx.Client(base_url=svc.base_url, timeout=30.0) as http:
            for bad in (SECRET + "\n", " " + SECRET, SECRET + "\r\nX-Evil: 1", "é" + SECRET, "x" * 4097):
                r = http.post("/api/v2/inference/start", json={**body, "token": bad})
                assert r.status_code == 400 and [e["field"] for e in r.json()["data"]["errors"]] == ["token"], r.text
                assert r.json()["msg"].startswith("token: ") and SECRET not in r.text
                r = http.post("/api/v2/training/start", json={"token": bad})
                assert r.status_code == 400 and "token" in [e["field"] for e in r.json()["data"]["errors"]], r.text
            r = http.post("/api/v2/inference/start", json={**body, "token": SECRET})
            assert r.status_code == 200, r.text
            task_id = r.json()["data"]["task_id"]
            done = svc.client.wait_for(task_id, timeout=180)
            seen = [r.text, http.get(f"/api/v2/tasks/{task_id}").text, http.get(f"/api/v2/inference/{task_id}").text,
                    http.get("/api/v2/tasks").text, http.get(f"/api/v2/tasks/{task_id}/logs").text,
                    http.get(f"/api/v2/tasks/{task_id}/events").text]  # fmt: skip
    finally:
        sat.close()
    assert done["status"] == "completed", svc.client.get_logs(task_id)[-3:]
    assert done["message"] == "completed; upload failed: results.json: HTTP 500 Rejected credentials ***; " \
                              "results.csv: HTTP 500 Rejected credentials ***"  # fmt: skip
    assert [u.headers["Authorization"] for u in sat.uploads] == [SECRET, SECRET]  # sent, and quoted back
    assert '"status":"completed"' in seen[-1].replace(" ", "")  # the SSE replay went to the end
    task_dir = svc.settings.tasks_dir / task_id
    files = [task_dir / name for name in ("events.jsonl", "stdout.log", "stderr.log")]
    seen += [f.read_text() for f in files] + [svc.supervisor.log_text(), svc.web_log_text()]
    assert [SECRET in text for text in seen] == [False] * len(seen)
