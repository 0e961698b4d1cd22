"""Online serving through the whole service: a real supervisor, real uvicorn, real replica
processes (``contract/SERVING.md``). One service for the module (warm starts from the fork
server); the tests run in order and share one deployment where they can."""

from __future__ import annotations

import base64
import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import psutil
import pytest

from tests.serving.conftest import SIZE
from tests.support.service import Service

NAME = "uav"


@pytest.fixture(scope="module")
def images(svc: Service) -> list[Path]:
    folder = svc.home / "images"
    folder.mkdir()
    rng = np.random.default_rng(7)
    paths = []
    for i in range(3):
        path = folder / f"img{i}.png"
        cv2.imwrite(str(path), rng.integers(0, 256, size=(40 + i, 48, 3), dtype=np.uint8))
        paths.append(path)
    return paths


def api(svc: Service, method: str, path: str, **kw: Any) -> httpx.Response:
    return httpx.request(method, svc.url(path), timeout=30.0, **kw)


def wait_deployment(svc: Service, name: str, *, status: str = "ready", version: int | None = None,
                    timeout: float = 90.0) -> dict[str, Any]:  # fmt: skip
    """Poll the deployment until it has ``status`` (and ``version``)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        r = api(svc, "GET", f"/api/v2/serving/{name}")
        last = r.json()
        if r.status_code == 200:
            dep = last["data"]
            if dep["status"] == status and (version is None or dep["version"] == version):
                return dep  # type: ignore[no-any-return]
            if dep["status"] == "failed" and status != "failed":
                pytest.fail(f"deployment failed: {dep}")
        threading.Event().wait(0.1)
    pytest.fail(f"deployment {name} not {status} (version {version}) within {timeout} s: {last}")


@pytest.fixture(scope="module")
def deployed(svc: Service, model: tuple[Path, Path]) -> dict[str, Any]:
    cfg, weights = model
    r = api(svc, "POST", "/api/v2/serving/deploy", json={
        "name": NAME, "cfg_path": str(cfg), "weight_path": str(weights), "device": "cpu", "replicas": 2,
        "threads": 1, "max_batch_delay_ms": 30, "max_batch_size": 8,
    })  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.json()["data"]["status"] == "loading"
    return wait_deployment(svc, NAME)


def predict(svc: Service, body: Any = None, *, name: str = NAME, **kw: Any) -> httpx.Response:
    if body is not None:
        kw["json"] = body
    return api(svc, "POST", f"/api/v2/serving/{name}/predict", **kw)


def test_a_deployment_is_a_task_with_replica_processes(svc: Service, deployed: dict[str, Any]) -> None:
    assert deployed["version"] == 1 and deployed["device"] == "cpu"
    assert deployed["model"]["model"] == "resnet18" and deployed["model"]["class_names"] == ["a", "b", "c"]
    assert [r["status"] for r in deployed["replicas"]] == ["ready", "ready"]
    for replica in deployed["replicas"]:
        title = " ".join(psutil.Process(replica["pid"]).cmdline())
        assert f"rfuav-replica {NAME} v1" in title
    task = api(svc, "GET", f"/api/v2/tasks/{deployed['task_id']}").json()["data"]
    assert task["task_type"] == "serving" and task["status"] == "running"
    listed = api(svc, "GET", "/api/v2/serving").json()["data"]["deployments"]
    assert [d["name"] for d in listed] == [NAME]
    runners = api(svc, "GET", "/api/v2/runners").json()["data"]["runners"]
    pids = {r["pid"] for r in runners if r.get("deployment") == NAME}
    assert pids == {r["pid"] for r in deployed["replicas"]}
    usage = api(svc, "GET", "/api/v2/resources").json()["data"]["device_usage"]["cpu"]
    assert usage["serving"] == 2


def test_predictions_equal_an_inference_jobs(svc: Service, deployed: dict[str, Any], model: tuple[Path, Path],
                                             images: list[Path]) -> None:  # fmt: skip
    cfg, weights = model
    task = svc.client.start_inference(cfg_path=str(cfg), weight_path=str(weights), source_path=str(images[0].parent),
                                      device="cpu", top_k=3)  # fmt: skip
    done = svc.client.wait_for(task["task_id"], timeout=120)
    assert done["status"] == "completed", done
    results = json.loads(Path(done["res"]["summary"]["results_json"]).read_text())["results"]
    by_image = {Path(r["image"]).name: r for r in results}
    for path in images:
        answer = predict(svc, {"path": str(path)})
        assert answer.status_code == 200, answer.text
        data = answer.json()["data"]
        job = by_image[path.name]
        assert data["class_name"] == job["top_class"]
        for p in job["predictions"]:
            assert abs(data["prediction"][p["class_id"]] - p["probability"]) < 1e-5
        assert data["model"] == NAME and data["version"] == 1


def test_every_input_form_gives_the_same_answer(svc: Service, deployed: dict[str, Any], images: list[Path]) -> None:
    path = images[1]
    raw = path.read_bytes()
    pixels = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    want = predict(svc, {"path": str(path)}).json()["data"]["prediction"]
    forms = [
        predict(svc, {"image_base64": base64.b64encode(raw).decode()}),
        predict(svc, {"image": pixels.tolist()}),
        predict(svc, content=raw, headers={"Content-Type": "image/png"}),
    ]
    for r in forms:
        assert r.status_code == 200, r.text
        assert np.allclose(r.json()["data"]["prediction"], want, atol=1e-5)
    batch = api(svc, "POST", f"/api/v2/serving/{NAME}/predict_batch", json={"paths": [str(p) for p in images]})
    assert batch.status_code == 200, batch.text
    body = batch.json()["data"]
    assert body["version"] == 1 and len(body["results"]) == 3
    assert np.allclose(body["results"][1]["prediction"], want, atol=1e-5)
    tensor = np.random.default_rng(1).standard_normal((3, SIZE, SIZE)).astype(np.float32).tolist()
    ours = predict(svc, {"input": tensor})
    article = api(svc, "POST", "/predict", json={"input": tensor})
    assert article.status_code == 200, article.text
    assert np.allclose(article.json()["prediction"][0], ours.json()["data"]["prediction"], atol=1e-5)
    article_batch = api(svc, "POST", "/predict_batch", json={"batch_inputs": [tensor, tensor]})
    assert article_batch.status_code == 200 and len(article_batch.json()["results"]) == 2


def test_bad_input_is_a_400_naming_the_field(svc: Service, deployed: dict[str, Any]) -> None:
    cases = [
        ({"input": [[[0.0]]]}, "input"),
        ({"image": [[[300, 0, 0]]]}, "image"),
        ({"image_base64": "not base64!"}, "image_base64"),
        ({"path": "/etc/passwd"}, "path"),
        ({"input": [], "image": []}, "exactly one"),
    ]
    for body, field in cases:
        r = predict(svc, body)
        assert r.status_code == 400, (body, r.text)
        assert field in r.json()["msg"]
    assert predict(svc, content=b"\x89PNG not really", headers={"Content-Type": "image/png"}).status_code == 400
    assert predict(svc, content=b"{}", headers={"Content-Type": "text/plain"}).status_code == 400
    assert predict(svc, {"input": []}, name="nope").status_code == 404
    assert api(svc, "POST", "/predict", json={"nope": 1}).json()["detail"]
    # The replicas are still there, answering.
    assert predict(svc, {"input": np.zeros((3, SIZE, SIZE)).tolist()}).status_code == 200


def test_concurrent_requests_share_a_forward_pass(svc: Service, deployed: dict[str, Any]) -> None:
    rng = np.random.default_rng(2)
    bodies = [{"input": rng.standard_normal((3, SIZE, SIZE)).tolist()} for _ in range(16)]
    # Two batch requests of 64 inputs (8 forward passes each) keep both replicas busy while the
    # 16 single requests arrive: those wait, and are gathered into shared forward passes.
    big = {"batch_inputs": [rng.standard_normal((3, SIZE, SIZE)).tolist() for _ in range(64)]}
    with ThreadPoolExecutor(18) as pool:
        busy = [pool.submit(api, svc, "POST", f"/api/v2/serving/{NAME}/predict_batch", json=big) for _ in range(2)]
        answers = list(pool.map(lambda b: predict(svc, b), bodies))
    assert [b.result().status_code for b in busy] == [200, 200]
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.status_code != 200]
    assert max(a.json()["data"]["batch_size"] for a in answers) > 1
    # The cache is per replica: of two more asks, one reaches a replica that answered it before.
    again = [predict(svc, bodies[0]).json()["data"] for _ in range(2)]
    assert any(a["cached"] for a in again)
    assert all(np.allclose(a["prediction"], answers[0].json()["data"]["prediction"], atol=1e-5) for a in again)


def test_deploy_errors(svc: Service, deployed: dict[str, Any], model: tuple[Path, Path]) -> None:
    cfg, weights = model
    body = {"name": NAME, "cfg_path": str(cfg), "weight_path": str(weights), "device": "cpu"}
    assert api(svc, "POST", "/api/v2/serving/deploy", json=body).status_code == 409
    bad = api(svc, "POST", "/api/v2/serving/deploy", json={**body, "name": "x", "replicas": 0})
    assert bad.status_code == 400 and "replicas" in bad.json()["msg"]
    both = api(svc, "POST", "/api/v2/serving/deploy", json={**body, "name": "x", "from_task": "t"})
    assert both.status_code == 400
    assert api(svc, "POST", "/api/v2/serving/deploy", json={"name": "x", "from_task": "nope"}).status_code == 404
    assert api(svc, "GET", "/api/v2/serving/nope").status_code == 404


class Load:
    """Requests from a few threads until stopped; every answer's status kept."""

    def __init__(self, svc: Service, threads: int = 3) -> None:
        self.svc = svc
        self.statuses: list[int] = []
        self.stop = threading.Event()
        self.body = {"input": np.zeros((3, SIZE, SIZE)).tolist()}
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def _run(self, i: int) -> None:
        with httpx.Client(timeout=60.0) as http:
            n = 0
            while not self.stop.is_set():
                n += 1
                body = {"input": (np.full((3, SIZE, SIZE), (i * 1000 + n) % 97 / 97.0)).tolist()}  # no cache hits
                r = http.post(self.svc.url(f"/api/v2/serving/{NAME}/predict"), json=body)
                self.statuses.append(r.status_code)

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)
            assert not t.is_alive(), "a request hung"


def test_reload_under_load_fails_no_request(svc: Service, deployed: dict[str, Any]) -> None:
    with Load(svc) as load:
        r = api(svc, "POST", f"/api/v2/serving/{NAME}/reload")
        assert r.status_code == 200, r.text
        assert r.json()["data"]["status"] == "reloading"
        dep = wait_deployment(svc, NAME, version=2)
    assert load.statuses and set(load.statuses) == {200}, sorted(set(load.statuses))
    old = {r["pid"] for r in deployed["replicas"]}
    assert not old & {r["pid"] for r in dep["replicas"]}
    gone = psutil.wait_procs([psutil.Process(p) for p in old if psutil.pid_exists(p)], timeout=30)[1]
    assert not gone, "old replicas still running after the switch"


def test_a_killed_replica_is_restarted_and_no_request_hangs(svc: Service, deployed: dict[str, Any]) -> None:
    dep = wait_deployment(svc, NAME, version=2)
    victim = dep["replicas"][0]["pid"]
    with Load(svc) as load:
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            now = api(svc, "GET", f"/api/v2/serving/{NAME}").json()["data"]
            pids = [r["pid"] for r in now["replicas"] if r["status"] == "ready"]
            if len(pids) == 2 and victim not in pids:
                break
            threading.Event().wait(0.1)
        else:
            pytest.fail(f"replica not restarted: {now}")
        ok_after = len(load.statuses)
        threading.Event().wait(0.5)  # a little load on the restarted pair
    assert now["restarts"] >= 1
    assert set(load.statuses) <= {200, 503}, sorted(set(load.statuses))
    assert 200 in load.statuses[ok_after:]


def test_a_full_queue_answers_503_with_retry_after(svc: Service, model: tuple[Path, Path]) -> None:
    cfg, weights = model
    r = api(svc, "POST", "/api/v2/serving/deploy", json={
        "name": "narrow", "cfg_path": str(cfg), "weight_path": str(weights), "device": "cpu", "replicas": 1,
        "max_queue": 1, "max_batch_size": 1, "max_batch_delay_ms": 0, "cache_size": 0,
    })  # fmt: skip
    assert r.status_code == 200, r.text
    wait_deployment(svc, "narrow")
    body = {"input": np.zeros((3, SIZE, SIZE)).tolist()}
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda _: predict(svc, body, name="narrow"), range(24)))
    statuses = {a.status_code for a in answers}
    assert statuses == {200, 503}, statuses
    full = next(a for a in answers if a.status_code == 503)
    assert full.headers["retry-after"] == "1" and "queue full" in full.json()["msg"]
    assert api(svc, "DELETE", "/api/v2/serving/narrow").status_code == 200


def test_replicas_that_keep_dying_fail_the_deployment_with_the_reason(svc: Service, model: tuple[Path, Path]) -> None:
    cfg, weights = model
    broken = svc.home / "broken"
    broken.mkdir()
    # Weights of a 3-class model under a config that says 4 classes: every replica fails to load.
    (broken / "config.yaml").write_text(cfg.read_text().replace("num_classes: 3", "num_classes: 4")
                                        .replace("- c\n", "- c\n- d\n"))  # fmt: skip
    r = api(svc, "POST", "/api/v2/serving/deploy", json={
        "name": "broken", "cfg_path": str(broken / "config.yaml"), "weight_path": str(weights), "device": "cpu",
    })  # fmt: skip
    assert r.status_code == 200, r.text
    dep = wait_deployment(svc, "broken", status="failed", timeout=120)
    assert "failed 5 times in a row" in dep["reason"] and "exit code 1" in dep["reason"]
    assert "weights" in dep["reason"]
    task = svc.client.wait_for(dep["task_id"], timeout=30)
    assert task["status"] == "failed" and "replicas keep failing" in task["message"]
    assert predict(svc, {"input": []}, name="broken").status_code == 503
    # A failed deployment's name may be deployed again; undeploy removes it.
    assert api(svc, "DELETE", "/api/v2/serving/broken").status_code == 200
    assert api(svc, "GET", "/api/v2/serving/broken").status_code == 404


def test_a_restart_of_the_service_brings_the_deployment_back(svc: Service, deployed: dict[str, Any]) -> None:
    before = wait_deployment(svc, NAME)
    svc.restart_supervisor()
    after = wait_deployment(svc, NAME, timeout=120)
    assert after["task_id"] == before["task_id"] and after["version"] == before["version"]
    assert not {r["pid"] for r in before["replicas"]} & {r["pid"] for r in after["replicas"]}
    assert predict(svc, {"input": np.zeros((3, SIZE, SIZE)).tolist()}).status_code == 200


def test_undeploy_stops_every_replica(svc: Service, deployed: dict[str, Any]) -> None:
    dep = wait_deployment(svc, NAME)
    procs = [psutil.Process(r["pid"]) for r in dep["replicas"]]
    r = api(svc, "DELETE", f"/api/v2/serving/{NAME}")
    assert r.status_code == 200, r.text
    assert not psutil.wait_procs(procs, timeout=30)[1]
    task = svc.client.wait_for(dep["task_id"], timeout=30)
    assert task["status"] == "completed"
    assert api(svc, "GET", f"/api/v2/serving/{NAME}").status_code == 404
    assert predict(svc, {"input": []}).status_code == 404
    assert api(svc, "POST", "/predict", json={"input": []}).status_code == 404


def test_a_stop_during_an_undeploy_and_a_reload_ends_cleanly(svc: Service, model: tuple[Path, Path]) -> None:
    """SIGTERM while one deployment drains (undeploy) and another reloads: the supervisor still
    stops (status 0), every replica is gone, and the reloading deployment comes back at the next
    start."""
    cfg, weights = model
    for name in ("going", "staying"):
        r = api(svc, "POST", "/api/v2/serving/deploy", json={
            "name": name, "cfg_path": str(cfg), "weight_path": str(weights), "device": "cpu", "replicas": 1,
        })  # fmt: skip
        assert r.status_code == 200, r.text
    going, staying = wait_deployment(svc, "going"), wait_deployment(svc, "staying")
    procs = [psutil.Process(d["replicas"][0]["pid"]) for d in (going, staying)]
    assert api(svc, "DELETE", "/api/v2/serving/going").status_code == 200
    assert api(svc, "POST", "/api/v2/serving/staying/reload").status_code == 200
    assert svc.supervisor.stop(timeout=60) == 0
    assert not psutil.wait_procs(procs, timeout=30)[1]
    svc.start_supervisor()
    back = wait_deployment(svc, "staying", timeout=120)
    assert back["task_id"] == staying["task_id"]
    assert api(svc, "GET", "/api/v2/serving/going").status_code == 404
    assert api(svc, "DELETE", "/api/v2/serving/staying").status_code == 200
