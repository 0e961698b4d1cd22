"""Training and inference in real runner processes on real data (scikit-learn digits).

One training run (module fixture) proves learning, the events, the artifacts and the upload;
inference then uses its saved config and weights on held-out images.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from protocol.events import EPOCH_METRICS
from runner import datasets, models
from tests.runner.harness import RunnerProcess, run_job
from tests.runner.satellite import Satellite

EPOCHS = 3
TOKEN = "tok-3f9a-never-logged"


@pytest.fixture(scope="module")
def satellite() -> Iterator[Satellite]:
    sat = Satellite(fail_first=1)  # the first upload gets a 500, its retry a 200
    yield sat
    sat.close()


@pytest.fixture(scope="module")
def trained(
    digits: dict[str, Path],
    satellite: Satellite,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("train")
    params = {
        "model": "resnet18", "num_classes": 10, "train_path": str(digits["train"]), "val_path": str(digits["val"]),
        "save_path": str(root / "runs"), "name": "digits", "batch_size": 16, "num_epochs": EPOCHS, "learning_rate": 1e-3,
        "image_size": 32, "pretrained": True, "shuffle": True, "seed": 7, "augment": False,
        "enable_upload": True, "upload_url": satellite.url, "token": TOKEN,
    }  # fmt: skip
    config = {
        "data_roots": [str(root), str(digits["train"].parent)],
        "upload_retries": 2,
    }
    rp = run_job(
        "training",
        params,
        root / "task",
        timeout=280,
        torch_threads=1,
        config=config,
        batch_cap=None,
    )
    return {"rp": rp, "out": root / "runs" / "digits", "params": params, "root": root}


@pytest.mark.timeout(300)
def test_training_learns_digits(trained: dict[str, Any]) -> None:
    rp: RunnerProcess = trained["rp"]
    assert rp.final is not None and rp.final["status"] == "completed", rp.log_tail()
    ends = rp.stage("epoch_end")
    assert [e["epoch"] for e in ends] == list(range(1, EPOCHS + 1))
    assert max(e["metrics"]["val_acc"] for e in ends) >= 90.0
    for e in ends:
        assert set(EPOCH_METRICS) <= set(e["metrics"])
        assert all(isinstance(e["metrics"][k], (int, float)) for k in EPOCH_METRICS)
        assert (
            e["total_epochs"] == EPOCHS
            and e["kind"] == "metrics"
            and 0 <= e["progress"] <= 100
        )
        m = e["metrics"]
        assert (
            0 <= m["macro_f1"] <= 1 and 0 <= m["mAP"] <= 1 and 0 <= m["precision"] <= 1
        )
        assert m["top1_acc"] == pytest.approx(m["val_acc"], abs=1e-3)
        assert m["top3_acc"] >= m["top1_acc"] and m["top5_acc"] >= m["top3_acc"]
    assert [e["epoch"] for e in rp.stage("epoch_start")] == list(range(1, EPOCHS + 1))
    assert len(rp.stage("validation")) == EPOCHS
    assert rp.stage("completed") and rp.stage("completed")[0]["progress"] == 100
    steps = rp.stage("training")
    assert steps and all(
        e["kind"] == "metrics" and "loss" in e["metrics"] for e in steps
    )
    assert [e["step"] for e in steps] == sorted(e["step"] for e in steps)
    # The pretrained weights are not cached here: said, not hidden.
    assert any(
        e["level"] == "WARNING" and "from scratch" in e["message"] for e in rp.events
    )


@pytest.mark.timeout(120)
def test_best_checkpoint_reproduces_reported_accuracy(
    trained: dict[str, Any], digits: dict[str, Path]
) -> None:
    rp: RunnerProcess = trained["rp"]
    out: Path = trained["out"]
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["model"] == "resnet18" and config["num_classes"] == 10
    assert (
        config["class_names"] == [str(i) for i in range(10)]
        and config["image_size"] == 32
    )
    assert len(config["mean"]) == 3 and len(config["std"]) == 3
    best = torch.load(out / "best.pth", weights_only=True)
    last = torch.load(out / "last.pth", weights_only=True)
    assert (
        last["epoch"] == EPOCHS
        and last["model_name"] == "resnet18"
        and last["num_classes"] == 10
    )
    assert isinstance(last["optimizer"], dict)
    reported = max(e["metrics"]["val_acc"] for e in rp.stage("epoch_end"))
    assert best["best_acc"] == pytest.approx(reported)
    model = models.build("resnet18", 10)
    models.load_state(model, best["model"], what="best.pth")
    model.eval()
    val = datasets.ImageFolder(
        digits["val"], datasets.transforms(32), class_names=config["class_names"]
    )
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(val), 64):
            batch = [val[j] for j in range(i, min(i + 64, len(val)))]
            x = torch.stack([b[0] for b in batch])
            y = torch.tensor([b[1] for b in batch])
            correct += int((model(x).argmax(1) == y).sum())
    assert correct * 100.0 / len(val) == pytest.approx(reported, abs=1e-6)


def test_training_upload_retried_and_token_never_logged(
    trained: dict[str, Any], satellite: Satellite
) -> None:
    rp: RunnerProcess = trained["rp"]
    assert satellite.uploads[0].status == 500  # the failure, then the retry
    ok = satellite.successful()
    assert len(ok) == 2
    by_type = {u.fields["fileType"]: u for u in ok}
    assert set(by_type) == {"cfg_path", "weight_path"}
    cfg, weights = by_type["cfg_path"], by_type["weight_path"]
    assert (
        cfg.fields["businessLabel"] == "SATEL_AGENT"
        and weights.fields["businessLabel"] == "SATEL_AGENT_WEIGHT"
    )
    assert cfg.files["file"] == (
        "config.yaml",
        (trained["out"] / "config.yaml").read_bytes(),
    )
    assert weights.files["file"] == (
        "best.pth",
        (trained["out"] / "best.pth").read_bytes(),
    )
    assert all(u.headers.get("Authorization") == TOKEN for u in satellite.uploads)
    assert any("retrying" in e["message"] and e["level"] == "ERROR" for e in rp.events)
    journal = (trained["root"] / "task" / "events.jsonl").read_text()
    assert TOKEN not in journal
    assert all(
        TOKEN not in (trained["root"] / "task" / f).read_text()
        for f in ("stdout.log", "stderr.log")
    )


@pytest.mark.timeout(200)
def test_inference_on_held_out_digits(
    trained: dict[str, Any], digits: dict[str, Path], tmp_path: Path
) -> None:
    out: Path = trained["out"]
    params = {"cfg_path": str(out / "config.yaml"), "weight_path": str(out / "best.pth"),
                  "source_path": str(digits["test"]), "save_path": str(tmp_path / "res"), "name": "t1", "batch_size": 32, "top_k": 3}  # fmt: skip
    rp = run_job("inference", params, tmp_path / "task", timeout=180, torch_threads=1)
    assert rp.final is not None and rp.final["status"] == "completed", rp.log_tail()
    report = json.loads((tmp_path / "res" / "t1" / "results.json").read_text())
    results = report["results"]
    expected = datasets.list_images(digits["test"])
    assert [r["image"] for r in results] == [str(p) for p in expected]
    correct = sum(r["top_class"] == Path(r["image"]).parent.name for r in results)
    assert correct / len(results) >= 0.9
    for r in results:
        probs = [p["probability"] for p in r["predictions"]]
        assert (
            len(probs) == 3
            and probs == sorted(probs, reverse=True)
            and r["top_class"] == r["predictions"][0]["class_name"]
        )
    csv_lines = (tmp_path / "res" / "t1" / "results.csv").read_text().splitlines()
    assert len(csv_lines) == len(results) + 1 and csv_lines[0].startswith(
        "image,top_class,probability"
    )
    res = [e for e in rp.events if e["kind"] == "result"]
    assert res[0]["result"]["image"] == results[0]["image"]
    final = res[-1]["result"]
    assert final["summary"]["count"] == len(results) and final["summary"]["failed"] == 0
    assert (
        final["image"] == results[-1]["image"]
        and final["top_class"] == results[-1]["top_class"]
    )


@pytest.mark.timeout(200)
def test_inference_single_image_from_zip_weights(
    trained: dict[str, Any], digits: dict[str, Path], tmp_path: Path
) -> None:
    import zipfile

    out: Path = trained["out"]
    bundle = tmp_path / "model.zip"
    with zipfile.ZipFile(bundle, "w") as zf:
        zf.write(out / "best.pth", "model/best.pth")
    image = datasets.list_images(digits["test"] / "7")[0]
    params = {
        "cfg_path": str(out / "config.yaml"),
        "weight_path": str(bundle),
        "source_path": str(image),
    }
    rp = run_job("inference", params, tmp_path / "task", timeout=180, torch_threads=1)
    assert rp.final is not None and rp.final["status"] == "completed", rp.log_tail()
    final = [e for e in rp.events if e["kind"] == "result"][-1]["result"]
    assert final["image"] == str(image) and final["summary"]["count"] == 1
    assert (
        tmp_path / "task" / "results" / "results.json"
    ).exists()  # save_path null → the task dir


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("fmt", ["pickle", "torch"])
def test_malicious_weights_refused_and_never_run(
    fmt: str, spectro: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    if fmt == "pickle":
        evil.write_bytes(pickle.dumps({"model": _Evil(marker)}))
    else:
        torch.save({"model": _Evil(marker)}, evil)
    assert not marker.exists()
    params = {"model": "resnet18", "num_classes": 3, "train_path": str(spectro), "val_path": str(spectro),
                  "save_path": str(tmp_path / "out"), "num_epochs": 1, "image_size": 32, "weight_path": str(evil)}  # fmt: skip
    rp = run_job("training", params, tmp_path / "task", timeout=100, torch_threads=1)
    assert rp.final is not None and rp.final["status"] == "failed"
    assert "refused weights file evil.pth" in rp.final["message"]
    assert not marker.exists()
    assert not (tmp_path / "out" / "last.pth").exists()


@pytest.mark.timeout(200)
def test_cancel_mid_epoch_saves_last_and_resume_continues(
    spectro: Path, tmp_path: Path
) -> None:
    params: dict[str, Any] = {
        "model": "resnet18", "num_classes": 3, "train_path": str(spectro), "val_path": str(spectro),
        "save_path": str(tmp_path / "out"), "batch_size": 2, "num_epochs": 50, "learning_rate": 1e-3, "image_size": 32,
        "pretrained": False, "seed": 1,
    }  # fmt: skip
    with RunnerProcess("training", params, tmp_path / "task1", torch_threads=1) as rp:
        rp.wait_for(lambda e: e.get("stage") == "training", timeout=120)
        rp.terminate()
        final = rp.finish(timeout=120)
    assert final["status"] == "cancelled", rp.log_tail()
    last_path = tmp_path / "out" / "last.pth"
    checkpoint = torch.load(last_path, weights_only=True)
    done = checkpoint["epoch"]
    assert checkpoint["step"] >= 1 and done < 50
    assert any("stopped during epoch" in e["message"] for e in rp.events)

    params.update(weight_path=str(last_path), num_epochs=done + 1)
    rp2 = run_job("training", params, tmp_path / "task2", timeout=150, torch_threads=1)
    assert rp2.final is not None and rp2.final["status"] == "completed", rp2.log_tail()
    assert any(e["message"].startswith("resuming from last.pth") for e in rp2.events)
    assert [e["epoch"] for e in rp2.stage("epoch_start")] == [done + 1]
    assert rp2.stage("training")[0]["step"] > checkpoint["step"]
    assert torch.load(last_path, weights_only=True)["epoch"] == done + 1


@pytest.mark.timeout(100)
def test_class_count_mismatch_fails_clearly(spectro: Path, tmp_path: Path) -> None:
    params = {"model": "resnet18", "num_classes": 5, "train_path": str(spectro), "val_path": str(spectro),
                  "save_path": str(tmp_path / "out"), "num_epochs": 1, "image_size": 32}  # fmt: skip
    rp = run_job("training", params, tmp_path / "task", timeout=90, torch_threads=1)
    assert rp.final is not None and rp.final["status"] == "failed"
    assert (
        "num_classes is 5 but the training set" in rp.final["message"]
        and "3 class folders" in rp.final["message"]
    )


@pytest.mark.timeout(200)
def test_inference_upload_failure_keeps_results_and_completes(
    trained: dict[str, Any], digits: dict[str, Path], tmp_path: Path
) -> None:
    """Decision (runner/upload.py): an upload that fails after its retries does not fail the
    task; it is reported as ERROR events and the local results stay."""
    sat = Satellite(fail_first=1000)
    try:
        out: Path = trained["out"]
        source = digits["test"] / "3"
        params = {"cfg_path": str(out / "config.yaml"), "weight_path": str(out / "best.pth"), "source_path": str(source),
                      "save_path": str(tmp_path / "res"), "enable_upload": True, "upload_url": sat.url, "token": TOKEN}  # fmt: skip
        rp = run_job(
            "inference",
            params,
            tmp_path / "task",
            timeout=180,
            torch_threads=1,
            config={"upload_retries": 1},
        )
    finally:
        sat.close()
    assert rp.final is not None and rp.final["status"] == "completed", rp.log_tail()
    assert len(sat.uploads) == 4  # two files, each tried twice
    assert {u.files["file"][0] for u in sat.uploads} == {"results.json", "results.csv"}
    assert all(
        u.fields == {"businessLabel": "SATEL_AGENT", "fileType": ""}
        for u in sat.uploads
    )
    errors = [e["message"] for e in rp.events if e["level"] == "ERROR"]
    assert any(m.startswith("upload failed (local results kept") for m in errors)
    assert (tmp_path / "res" / "results.json").exists() and (
        tmp_path / "res" / "results.csv"
    ).exists()
    assert TOKEN not in (tmp_path / "task" / "events.jsonl").read_text()


@pytest.mark.timeout(200)
def test_inference_from_urls(
    trained: dict[str, Any], digits: dict[str, Path], tmp_path: Path
) -> None:
    """cfg, weights and a zip of images all given as URLs (a real http.server on loopback):
    downloaded into the task directory, the zip extracted and then removed."""
    import functools
    import threading
    import zipfile
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    served = tmp_path / "served"
    served.mkdir()
    out: Path = trained["out"]
    (served / "config.yaml").write_bytes((out / "config.yaml").read_bytes())
    (served / "best.pth").write_bytes((out / "best.pth").read_bytes())
    images = datasets.list_images(digits["test"] / "5")
    with zipfile.ZipFile(served / "images.zip", "w") as zf:
        for p in images:
            zf.write(p, f"batch/{p.name}")

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(served))
    )
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{httpd.server_address[1]}"
        params = {
            "cfg_path": f"{base}/config.yaml",
            "weight_path": f"{base}/best.pth",
            "source_path": f"{base}/images.zip",
        }
        rp = run_job(
            "inference", params, tmp_path / "task", timeout=180, torch_threads=1
        )
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)
    assert rp.final is not None and rp.final["status"] == "completed", rp.log_tail()
    results = json.loads((tmp_path / "task" / "results" / "results.json").read_text())[
        "results"
    ]
    assert sorted(Path(r["image"]).name for r in results) == sorted(
        p.name for p in images
    )
    assert all(
        Path(r["image"]).is_relative_to(
            tmp_path / "task" / "inputs" / "source" / "batch"
        )
        for r in results
    )
    assert not (
        tmp_path / "task" / "downloads" / "source" / "images.zip"
    ).exists()  # removed after extraction
    assert sum(r["top_class"] == "5" for r in results) / len(results) >= 0.9


@pytest.mark.timeout(150)
def test_inference_reports_unreadable_images(
    trained: dict[str, Any], digits: dict[str, Path], tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    good = datasets.list_images(digits["test"] / "2")[0]
    (src / "good.png").write_bytes(good.read_bytes())
    (src / "broken.png").write_bytes(b"not a png at all")
    out: Path = trained["out"]
    params = {
        "cfg_path": str(out / "config.yaml"),
        "weight_path": str(out / "best.pth"),
        "source_path": str(src),
    }
    rp = run_job("inference", params, tmp_path / "task", timeout=120, torch_threads=1)
    assert rp.final is not None and rp.final["status"] == "completed", rp.log_tail()
    summary = [e for e in rp.events if e["kind"] == "result"][-1]["result"]["summary"]
    assert summary["count"] == 2 and summary["failed"] == 1
    results = {
        Path(r["image"]).name: r
        for r in json.loads(
            (tmp_path / "task" / "results" / "results.json").read_text()
        )["results"]
    }
    assert (
        results["broken.png"]["error"] == "cannot decode image"
        and "predictions" not in results["broken.png"]
    )
    assert (
        results["good.png"]["top_class"] in [str(i) for i in range(10)]
        and "error" not in results["good.png"]
    )
    assert any(
        e["level"] == "WARNING" and "broken.png" in e["message"] for e in rp.events
    )
