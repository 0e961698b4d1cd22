"""Inference in real runner processes with the model trained once per session (``trained``,
tests/runner/conftest.py): results checked image by image against a plain PyTorch forward,
inputs as folders, single images, zips and URLs, uploads that fail, and output confinement."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from runner import datasets, models
from tests.runner.conftest import TRAIN_TOKEN as TOKEN
from tests.runner.fileserver import serve
from tests.runner.harness import run_job
from tests.runner.satellite import Satellite


@pytest.mark.timeout(200)
def test_inference_on_held_out_digits(trained: dict[str, Any], digits: dict[str, Path], tmp_path: Path) -> None:
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
    assert len(csv_lines) == len(results) + 1 and csv_lines[0].startswith("image,top_class,probability")
    # The job's probabilities (conv+bn folded, channels-last, batched) are those of a plain
    # model.eval() forward of the same weights on the same inputs.
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    model = models.build("resnet18", 10)
    models.load_state(model, models.state_of(torch.load(out / "best.pth", weights_only=True)), what="best.pth")
    images = datasets.ImageList(expected, datasets.transforms(32, mean=cfg["mean"], std=cfg["std"]), 32)
    with torch.inference_mode():
        plain = torch.softmax(model.eval()(torch.stack([images[i][0] for i in range(len(images))])), 1)
    for r, row in zip(results, plain.tolist()):
        third = sorted(row, reverse=True)[2]
        for p in r["predictions"]:
            assert p["probability"] == pytest.approx(row[p["class_id"]], abs=1e-5), r["image"]
            assert row[p["class_id"]] >= third - 1e-5  # one of the three most probable
    res = [e for e in rp.events if e["kind"] == "result"]
    assert res[0]["result"]["image"] == results[0]["image"]
    final = res[-1]["result"]
    assert final["summary"]["count"] == len(results) and final["summary"]["failed"] == 0
    assert final["image"] == results[-1]["image"] and final["top_class"] == results[-1]["top_class"]


@pytest.mark.timeout(200)
def test_inference_single_image_from_zip_weights(
    trained: dict[str, Any], digits: dict[str, Path], tmp_path: Path
) -> None:
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
    assert (tmp_path / "task" / "results" / "results.json").exists()  # save_path null → the task dir


@pytest.mark.timeout(200)
def test_inference_upload_failure_keeps_results_and_completes(
    trained: dict[str, Any], digits: dict[str, Path], tmp_path: Path
) -> None:
    """Decision (runner/upload.py): an upload that fails after its retries does not fail the
    task ("completed; upload failed: …"); it is reported as ERROR events and the local results
    stay. The platform misbehaves and quotes the token in its reason phrase: the token reaches
    no event, no message and no file of the task."""
    sat = Satellite(fail_first=1000, echo_header="Authorization")
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
            config={"upload_retries": 1, "url_allow_loopback": True},
        )
    finally:
        sat.close()
    assert rp.final is not None and rp.final["status"] == "completed", rp.log_tail()
    assert rp.final["message"] == (
        "completed; upload failed: results.json: HTTP 500 Rejected credentials ***; "
        "results.csv: HTTP 500 Rejected credentials ***"
    )
    assert len(sat.uploads) == 4  # two files, each tried twice
    assert all(u.headers["Authorization"] == TOKEN for u in sat.uploads)  # sent, and echoed
    assert {u.files["file"][0] for u in sat.uploads} == {"results.json", "results.csv"}
    assert all(u.fields == {"businessLabel": "SATEL_AGENT", "fileType": ""} for u in sat.uploads)
    errors = [e["message"] for e in rp.events if e["level"] == "ERROR"]
    assert any(m.startswith("upload failed (local results kept") for m in errors)
    assert (tmp_path / "res" / "results.json").exists() and (tmp_path / "res" / "results.csv").exists()
    assert all(TOKEN not in json.dumps(e) for e in rp.events)
    for name in ("events.jsonl", "stdout.log", "stderr.log"):
        assert TOKEN not in (tmp_path / "task" / name).read_text(), name


@pytest.mark.timeout(200)
def test_inference_from_urls(trained: dict[str, Any], digits: dict[str, Path], tmp_path: Path) -> None:
    """cfg, weights and a zip of images all given as URLs (a real http.server on loopback):
    downloaded into the task directory, the zip extracted and then removed."""
    served = tmp_path / "served"
    served.mkdir()
    out: Path = trained["out"]
    (served / "config.yaml").write_bytes((out / "config.yaml").read_bytes())
    (served / "best.pth").write_bytes((out / "best.pth").read_bytes())
    images = datasets.list_images(digits["test"] / "5")
    with zipfile.ZipFile(served / "images.zip", "w") as zf:
        for p in images:
            zf.write(p, f"batch/{p.name}")

    with serve(served) as base:
        params = {
            "cfg_path": f"{base}/config.yaml",
            "weight_path": f"{base}/best.pth",
            "source_path": f"{base}/images.zip",
        }
        rp = run_job("inference", params, tmp_path / "task", timeout=180, torch_threads=1,
                     config={"url_allow_loopback": True})  # fmt: skip
    assert rp.final is not None and rp.final["status"] == "completed", rp.log_tail()
    results = json.loads((tmp_path / "task" / "results" / "results.json").read_text())["results"]
    assert sorted(Path(r["image"]).name for r in results) == sorted(p.name for p in images)
    assert all(Path(r["image"]).is_relative_to(tmp_path / "task" / "inputs" / "source" / "batch") for r in results)
    assert not (tmp_path / "task" / "downloads" / "source" / "images.zip").exists()  # removed after extraction
    assert sum(r["top_class"] == "5" for r in results) / len(results) >= 0.9


@pytest.mark.timeout(150)
def test_inference_reports_unreadable_images(trained: dict[str, Any], digits: dict[str, Path], tmp_path: Path) -> None:
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
        for r in json.loads((tmp_path / "task" / "results" / "results.json").read_text())["results"]
    }
    assert results["broken.png"]["error"] == "cannot decode image" and "predictions" not in results["broken.png"]
    assert results["good.png"]["top_class"] in [str(i) for i in range(10)] and "error" not in results["good.png"]
    assert any(e["level"] == "WARNING" and "broken.png" in e["message"] for e in rp.events)


@pytest.mark.timeout(150)
def test_results_file_symlinked_outside_is_refused(
    trained: dict[str, Any], digits: dict[str, Path], tmp_path: Path
) -> None:
    """save_path is inside the data roots, but its results.json is a symbolic link to a file
    outside them: the job fails naming it, and the outside file is untouched."""
    outside = tmp_path / "outside.json"
    outside.write_text("precious")
    save = tmp_path / "root" / "res"
    save.mkdir(parents=True)
    (save / "results.json").symlink_to(outside)
    out: Path = trained["out"]
    params = {"cfg_path": str(out / "config.yaml"), "weight_path": str(out / "best.pth"),
              "source_path": str(digits["test"] / "1"), "save_path": str(save)}  # fmt: skip
    roots = [str(tmp_path / "root"), str(trained["root"]), str(digits["test"].parent)]
    rp = run_job("inference", params, tmp_path / "task", timeout=120, torch_threads=1, config={"data_roots": roots})
    assert rp.final is not None and rp.final["status"] == "failed", rp.log_tail()
    assert rp.final["message"] == (
        f"UnsafePath: refused to write {save / 'results.json'}: results.json is a symbolic link"
    )
    assert outside.read_text() == "precious" and (save / "results.json").is_symlink()
    assert sorted(p.name for p in save.iterdir()) == ["results.json"]  # no temporary file left
