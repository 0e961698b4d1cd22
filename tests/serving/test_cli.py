"""``rfuav serve`` and ``RFUAVClient``'s serving methods against a real service with a real
deployment (one replica process), and the ``rfuav_serving_*`` series of ``/metrics`` it leaves.

One service and one deployment for the module, made by ``rfuav serve deploy --wait``; the tests
run in order (deploy, list/show, predict, metrics, reload, refusals, undeploy). The CLI runs in
this process (``web.cli.main``: what the ``rfuav`` script calls), its output captured.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.serving.conftest import SIZE
from tests.support.service import Service, free_port
from tests.web.test_sse import wait_until
from web.cli import main
from web.client import RFUAVError

pytestmark = pytest.mark.timeout(180)

NAME = "cli"


@pytest.fixture(scope="module")
def images(svc: Service) -> dict[str, Path]:
    """A PNG, a JPEG (other pixels), and a file that is no image."""
    folder = svc.home / "images"
    folder.mkdir()
    rng = np.random.default_rng(3)
    out = {"png": folder / "one.png", "jpeg": folder / "two.jpg", "bad": folder / "notes.png"}
    cv2.imwrite(str(out["png"]), rng.integers(0, 256, size=(36, 40, 3), dtype=np.uint8))
    cv2.imwrite(str(out["jpeg"]), rng.integers(0, 256, size=(30, 30, 3), dtype=np.uint8))
    out["bad"].write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    return out


def rfuav(svc: Service, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``rfuav --url <svc> ARGS``: exit code, stdout, stderr."""
    capsys.readouterr()
    code = main(["--url", svc.base_url, *args])  # a later --url wins
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def deployed(svc: Service, model: tuple[Path, Path]) -> dict[str, Any]:
    cfg, weights = model
    code = main(["serve", "deploy", NAME, "--cfg", str(cfg), "--weights", str(weights), "--device", "cpu",
                 "--replicas", "1", "--threads", "1", "--max-batch-delay-ms", "2", "--top-k", "2", "--wait",
                 "--wait-timeout", "90", "--json", "--url", svc.base_url])  # fmt: skip
    assert code == 0
    return svc.client.deployment(NAME)


def test_deploy_waits_until_ready_then_list_and_show(
    svc: Service, deployed: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert deployed["status"] == "ready" and deployed["version"] == 1 and deployed["device"] == "cpu"
    assert deployed["settings"]["top_k"] == 2 and deployed["settings"]["max_batch_delay_ms"] == 2
    assert [r["status"] for r in deployed["replicas"]] == ["ready"]
    assert [d["name"] for d in svc.client.deployments()] == [NAME]

    code, out, _ = rfuav(svc, capsys, "serve", "list")
    assert code == 0
    header, row = out.splitlines()
    assert header.split()[:5] == ["NAME", "STATUS", "VER", "DEVICE", "REPLICAS"]
    assert row.split()[:6] == [NAME, "ready", "1", "cpu", "1/1", "0"]
    assert row.split()[-1] == deployed["task_id"]
    code, out, _ = rfuav(svc, capsys, "serve", "list", "--json")
    assert code == 0 and [d["name"] for d in json.loads(out)] == [NAME]

    code, out, _ = rfuav(svc, capsys, "serve", "show", NAME)
    assert code == 0
    assert f"task_id:        {deployed['task_id']}" in out and "status:         ready" in out
    assert "resnet18" in out and "max_batch_size" in out and "p99_ms" in out
    assert str(deployed["replicas"][0]["pid"]) in out
    code, out, _ = rfuav(svc, capsys, "serve", "show", NAME, "--json")
    assert code == 0 and json.loads(out)["model"] == deployed["model"]


def test_predict_files_and_every_client_form_agree(
    svc: Service, deployed: dict[str, Any], images: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    png, jpeg = images["png"], images["jpeg"]
    code, out, err = rfuav(svc, capsys, "serve", "predict", NAME, str(png), str(jpeg), "--json")
    assert code == 0, err
    by_file = {a["file"]: a for a in json.loads(out)}
    assert by_file[str(png)]["model"] == NAME and len(by_file[str(png)]["top_k"]) == 2

    client = svc.client
    for path in (png, jpeg):
        want = client.predict(NAME, path=str(path))
        assert np.allclose(by_file[str(path)]["prediction"], want["prediction"], atol=1e-5)
        ctype = "image/jpeg" if path.suffix == ".jpg" else "image/png"
        raw = client.predict(NAME, raw=path.read_bytes(), content_type=ctype)
        assert np.allclose(raw["prediction"], want["prediction"], atol=1e-5)
    bgr = cv2.imread(str(png))
    assert bgr is not None
    pixels = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    as_array = client.predict(NAME, image=pixels)
    assert np.allclose(as_array["prediction"], by_file[str(png)]["prediction"], atol=1e-5)
    batch = client.predict_batch(NAME, paths=[str(png), str(jpeg)])
    assert batch["model"] == NAME and batch["version"] == 1
    assert [r["class_name"] for r in batch["results"]] == [by_file[str(p)]["class_name"] for p in (png, jpeg)]
    tensor = np.zeros((3, SIZE, SIZE), dtype=np.float32)
    assert len(client.predict(NAME, input=tensor)["prediction"]) == 3
    assert len(client.predict_batch(NAME, batch_inputs=[tensor, tensor])["results"]) == 2
    with pytest.raises(ValueError, match="not both"):
        client.predict(NAME, raw=b"x", path="y")

    # The table: one row per file, its class and top probability.
    code, out, err = rfuav(svc, capsys, "serve", "predict", NAME, str(png), str(images["bad"]),
                           str(png.with_name("missing.png")))  # fmt: skip
    assert code == 1
    lines = out.splitlines()
    assert lines[0].split() == ["FILE", "CLASS", "PROBABILITY", "MS"] and len(lines) == 2
    answer = by_file[str(png)]
    assert lines[1].split()[:3] == [str(png), answer["class_name"], f"{answer['top_k'][0]['probability']:.4f}"]
    assert f"{images['bad']}: " in err and "(HTTP 400)" in err
    assert "missing.png: cannot read it" in err


def _series(svc: Service) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(svc.url("/metrics"), timeout=10).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("rfuav_serving_")
    }


def test_metrics_per_deployment(svc: Service, deployed: dict[str, Any]) -> None:
    dep = (("deployment", NAME),)
    # The supervisor's figures come from its probes of the replicas (every second): wait for them
    # to count the passes and the cache hit (the PNG was predicted twice, the same bytes).
    got = wait_until(
        svc,
        lambda: (m := _series(svc)).get(("rfuav_serving_cache_hits_total", dep), 0) >= 1 and m,
        30,
        "the replicas' batches and cache hits in /metrics",
    )
    ok = got[("rfuav_serving_requests_total", (("deployment", NAME), ("status", "200")))]
    refused = got[("rfuav_serving_requests_total", (("deployment", NAME), ("status", "400")))]
    # The previous test's: 11 answers, one refusal (the file that is no image).
    assert ok == 11 and refused == 1
    assert got[("rfuav_serving_request_seconds_count", dep)] == ok + refused
    assert got[("rfuav_serving_request_seconds_bucket", (("deployment", NAME), ("le", "+Inf")))] == ok + refused
    assert got[("rfuav_serving_request_seconds_sum", dep)] > 0
    assert got[("rfuav_serving_replicas_up", dep)] == 1 and got[("rfuav_serving_replicas", dep)] == 1
    assert got[("rfuav_serving_deployment_status", (("deployment", NAME), ("status", "ready")))] == 1
    assert got[("rfuav_serving_version", dep)] == 1
    assert got[("rfuav_serving_batches_total", dep)] >= 1 and got[("rfuav_serving_mean_batch_size", dep)] >= 1
    assert got[("rfuav_serving_restarts_total", dep)] == 0
    # The batch-size and queue-wait histograms: one observation per forward pass, one per request
    # that reached a pass.
    assert got[("rfuav_serving_batch_size_count", dep)] == got[("rfuav_serving_batches_total", dep)]
    assert got[("rfuav_serving_queue_wait_seconds_count", dep)] >= got[("rfuav_serving_batches_total", dep)]
    # Only real deployments are labels: a made-up name's 404 is no series.
    with pytest.raises(RFUAVError) as nope:
        svc.client.predict("made-up", path="x.png")
    assert nope.value.code == 404
    assert {dict(labels)["deployment"] for _, labels in _series(svc) if labels} == {NAME}


def test_reload_waits_for_the_next_version(
    svc: Service, deployed: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = rfuav(svc, capsys, "serve", "reload", NAME, "--wait", "--wait-timeout", "90")
    assert code == 0, err
    assert out.startswith(f"{NAME} ready: version 2, cpu, 1/1 replicas ready"), out
    again = svc.client.reload(NAME)
    assert again["status"] == "reloading"
    done = svc.client.wait_deployment(NAME, version=3, timeout=90)
    assert done["status"] == "ready" and done["version"] == 3
    assert svc.client.predict(NAME, input=np.zeros((3, SIZE, SIZE)))["version"] == 3


def test_refusals_exit_1_with_the_services_message(
    svc: Service, deployed: dict[str, Any], model: tuple[Path, Path], images: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    cfg, weights = model
    code, _, err = rfuav(svc, capsys, "serve", "show", "nope")
    assert code == 1 and "not found" in err and "(HTTP 404)" in err
    code, _, err = rfuav(svc, capsys, "serve", "deploy", NAME, "--cfg", str(cfg), "--weights", str(weights))
    assert code == 1 and "(HTTP 409)" in err
    code, _, err = rfuav(svc, capsys, "serve", "deploy", "other", "--from-task", "no-such-task")
    assert code == 1 and "(HTTP 404)" in err and "from_task" in err
    code, _, err = rfuav(svc, capsys, "serve", "deploy", "other", "--cfg", str(cfg))
    assert code == 1 and "(HTTP 400)" in err
    code, _, err = rfuav(svc, capsys, "serve", "predict", "nope", str(images["png"]))
    assert code == 1 and "(HTTP 404)" in err
    with pytest.raises(RFUAVError) as bad:
        svc.client.deploy("other", cfg_path=str(cfg), weight_path=str(weights), replicas=0)
    assert bad.value.code == 400 and "replicas" in bad.value.msg
    code, _, err = rfuav(svc, capsys, "serve", "list", "--url", f"http://127.0.0.1:{free_port()}")
    assert code == 3 and "unreachable" in err
    with pytest.raises(SystemExit) as usage:
        main(["serve", "predict", NAME])  # no file
    assert usage.value.code == 2
    assert [d["name"] for d in svc.client.deployments()] == [NAME]  # nothing else was deployed


def test_undeploy_stops_the_replica_and_ends_the_task(
    svc: Service, deployed: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    pids = [r["pid"] for r in svc.client.deployment(NAME)["replicas"]]
    code, out, _ = rfuav(svc, capsys, "serve", "undeploy", NAME)
    assert code == 0 and out.startswith(f"{NAME} stopped")
    assert svc.client.wait_for(deployed["task_id"], timeout=30)["status"] == "completed"
    assert not psutil.wait_procs([psutil.Process(p) for p in pids if psutil.pid_exists(p)], timeout=30)[1]
    code, out, _ = rfuav(svc, capsys, "serve", "list")
    assert code == 0 and out.splitlines()[1:] == []
    with pytest.raises(RFUAVError) as gone:
        svc.client.deployment(NAME)
    assert gone.value.code == 404


@pytest.mark.parametrize("action", ["deploy", "list", "show", "predict", "reload", "undeploy"])
def test_help_of_every_action(action: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["serve", action, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: rfuav serve {action}") and "--json" in out
