"""Every endpoint over real HTTP (uvicorn) against a real supervisor: success paths and each error
class, always inside the ``{code, msg, data}`` envelope.

The ``api`` service keeps training, inference and preprocessing tasks pending (CPU limits 0), so
their submission is checked without running torch; diagnostic tasks run for real.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from protocol.catalog import AUGMENT_METHODS, MODELS
from tests.support.service import Service
from web.auth import PROTECTED_PREFIX
from web.routes import ROUTES

TASK_FIELDS = (
    "task_id", "task_type", "status", "message", "progress", "device", "priority", "description",
    "current_epoch", "total_epochs", "latest_metrics", "duration", "strategy_type", "res",
    "created_at", "updated_at",
)  # fmt: skip


@pytest.fixture(scope="module")
def http(api: Service) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api.base_url, timeout=30.0) as client:
        yield client


@pytest.fixture(scope="module")
def data(api: Service) -> Path:
    """Small real inputs inside the data root (RFUAV_HOME)."""
    root = api.home / "data"
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            (root / split / cls / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (root / "model.yaml").write_text("model: resnet18\nnum_classes: 2\n")
    (root / "best.pth").write_bytes(b"weights")
    return root


def ok(response: httpx.Response) -> Any:
    body = response.json()
    assert response.status_code == 200, body
    assert body["code"] == 200 and body["msg"] == "", body
    return body["data"]


def fail(response: httpx.Response, status: int, *words: str) -> dict[str, Any]:
    body = response.json()
    assert response.status_code == status, body
    assert set(body) == {"code", "msg", "data"} and body["code"] == status, body
    for word in words:
        assert word in body["msg"], (word, body["msg"])
    return body  # type: ignore[no-any-return]


def host_gpus() -> list[str]:
    """The names of the GPUs NVML sees on this host ([] without NVML): what the service reports."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return []
    try:
        names = [
            pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i)) for i in range(pynvml.nvmlDeviceGetCount())
        ]
        return [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    finally:
        pynvml.nvmlShutdown()


GPUS = host_gpus()


def training(data: Path, **extra: Any) -> dict[str, Any]:
    return {"model": "resnet18", "num_classes": 2, "train_path": "data/train", "val_path": "data/val",
            "save_path": "models/out", "num_epochs": 1, **extra}  # fmt: skip


# -- meta -----------------------------------------------------------------------------------
def test_health_and_info(http: httpx.Client) -> None:
    h = ok(http.get("/api/v1/health"))
    assert h["status"] == "healthy" and h["active_log_streams"] == 0
    assert set(h) >= {"timestamp", "version", "training_tasks", "inference_tasks", "resource_status"}
    assert h["resource_status"] == {"gpu_available": bool(GPUS), "gpu_count": len(GPUS)}
    i = ok(http.get("/api/v1/info"))
    assert i["app_name"] == "RFUAV Model Service" and i["supported_models"] == list(MODELS)
    assert set(i["resource_limits"]) == {"max_training_concurrent_gpu", "max_inference_concurrent_gpu"}
    assert i["gpu_available"] is bool(GPUS)


def test_unknown_route_and_method_are_enveloped(http: httpx.Client) -> None:
    fail(http.get("/api/v2/nothing"), 404, "no route")
    fail(http.delete("/api/v2/training/start"), 405, "not allowed")
    fail(http.put("/api/v2/tasks"), 405)


def test_docs_openapi_dashboard_metrics(http: httpx.Client) -> None:
    spec = http.get("/openapi.json").json()
    assert spec["openapi"].startswith("3.") and "/api/v2/training/start" in spec["paths"]
    assert "TrainingRequest" in spec["components"]["schemas"]
    page = http.get("/docs")
    assert page.status_code == 200 and "/static/docs/swagger-ui-bundle.js" in page.text
    assert "cdn" not in page.text.lower()
    asset = http.get("/static/docs/swagger-ui-bundle.js")
    assert asset.status_code == 200 and len(asset.content) > 100_000
    home = http.get("/")
    assert home.status_code == 200 and "text/html" in home.headers["content-type"]
    # The icon a browser asks for by itself (a 404 there is a console error on every page).
    icon = http.get("/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/svg+xml" and b"<svg" in icon.content
    assert 'rel="icon"' in home.text and 'rel="icon"' in page.text
    metrics = http.get("/metrics")
    assert metrics.status_code == 200
    for name in ("rfuav_tasks", "rfuav_queue_length", "rfuav_runners", "rfuav_sse_clients",
                 "rfuav_events_relayed_total", "rfuav_http_request_duration_seconds_bucket"):  # fmt: skip
        assert name in metrics.text, name
    assert "rfuav_supervisor_up 1.0" in metrics.text


# -- training -------------------------------------------------------------------------------
def test_training_lifecycle(http: httpx.Client, data: Path, api: Service) -> None:
    secret = "tok-never-shown-4711"
    body = training(data, token=secret, enable_upload=True, upload_url="http://127.0.0.1:9/up",
                    strategy_type="s-1", description="d", device="cpu", name="run1")  # fmt: skip
    task = ok(http.post("/api/v2/training/start", json=body))
    assert all(f in task for f in TASK_FIELDS)
    assert task["task_type"] == "training" and task["status"] == "pending" and task["strategy_type"] == "s-1"
    assert task["total_epochs"] == 1 and task["res"] is None and task["device"] == "cpu"
    params = task["params"]
    assert params["train_path"] == str((api.home / "data" / "train").resolve())
    assert params["save_path"] == str((api.home / "models" / "out").resolve())
    task_id = task["task_id"]

    got = ok(http.get(f"/api/v2/training/{task_id}"))
    assert got["task_id"] == task_id
    fail(http.get(f"/api/v2/inference/{task_id}"), 404, task_id)
    fail(http.get(f"/api/v2/preprocessing/{task_id}"), 404)
    assert ok(http.get(f"/api/v2/tasks/{task_id}"))["task_type"] == "training"
    fail(http.delete(f"/api/v2/tasks/{task_id}"), 409, "cancel it first")

    stopped = ok(http.post(f"/api/v2/training/{task_id}/stop"))
    assert stopped["status"] == "success" and stopped["task_id"] == task_id
    assert stopped["message"] == f"task {task_id} stopped"  # a pending task ends at once
    assert ok(http.get(f"/api/v2/tasks/{task_id}"))["status"] == "cancelled"
    again = fail(http.post(f"/api/v2/training/{task_id}/stop"), 409, "already ended")
    assert again["data"]["status"] == "error"

    everything = http.get(f"/api/v2/tasks/{task_id}").text + http.get("/api/v2/tasks").text
    everything += http.get(f"/api/v2/tasks/{task_id}/logs").text
    assert secret not in everything
    assert secret not in api.web_log_text() and secret not in api.supervisor.log_text()

    deleted = ok(http.delete(f"/api/v2/tasks/{task_id}"))
    assert deleted == {"status": "success", "message": f"task {task_id} deleted", "task_id": task_id}
    fail(http.get(f"/api/v2/tasks/{task_id}"), 404)


def test_custom_task_id_conflict(http: httpx.Client, data: Path) -> None:
    ok(http.post("/api/v2/training/start", json=training(data, task_id="mine-1")))
    fail(http.post("/api/v2/training/start", json=training(data, task_id="mine-1")), 409, "mine-1")
    ok(http.post("/api/v2/tasks/mine-1/cancel"))


def test_unknown_ids(http: httpx.Client) -> None:
    for path in ("/api/v2/tasks/nope", "/api/v2/training/nope", "/api/v2/inference/nope",
                 "/api/v2/preprocessing/nope", "/api/v2/tasks/nope/logs"):  # fmt: skip
        fail(http.get(path), 404, "nope")
    fail(http.post("/api/v2/tasks/nope/cancel"), 404)
    fail(http.post("/api/v2/training/nope/stop"), 404)
    fail(http.delete("/api/v2/tasks/nope"), 404)


# -- bad input ------------------------------------------------------------------------------
def test_body_errors(http: httpx.Client, data: Path, api: Service) -> None:
    url = "/api/v2/training/start"
    fail(http.post(url, content=b"{not json", headers={"content-type": "application/json"}), 400, "not valid JSON")
    fail(http.post(url, content=b"model=x", headers={"content-type": "application/x-www-form-urlencoded"}),
         400, "Content-Type must be application/json")  # fmt: skip
    fail(http.post(url, content=b'{"a": 1}'), 400, "Content-Type")
    fail(http.post(url, json=[1, 2]), 400, "JSON object")
    fail(http.post(url, content=b"", headers={"content-type": "application/json"}), 400, "empty")
    missing = fail(http.post(url, json={"model": "resnet18"}), 400, "num_classes: is required")
    assert {"field": "train_path", "error": "is required"} in missing["data"]["errors"]
    fail(http.post(url, json=training(data, batch_size=0)), 400, "batch_size: must be >= 1")
    fail(http.post(url, json=training(data, num_epochs="3")), 400, "num_epochs: must be an integer")
    fail(http.post(url, json=training(data, priority=0)), 400, "priority")
    fail(http.post(url, json=training(data, num_epochs=2**63)), 400, "num_epochs: must be <= 1000000")
    fail(http.post(url, content=b'{"num_classes": 1e999}', headers={"content-type": "application/json"}), 400)
    bad_model = fail(http.post(url, json=training(data, model="resnet9000")), 400, "unknown model 'resnet9000'")
    assert "resnet18" in bad_model["msg"] and "maxvit_t" in bad_model["msg"]
    fail(http.post(url, json=training(data, device="cuda:7")), 400, "cuda:7")


def test_paths_are_confined(http: httpx.Client, data: Path, api: Service) -> None:
    url = "/api/v2/training/start"
    fail(http.post(url, json=training(data, train_path="/etc")), 400, "train_path", "outside the data roots")
    fail(http.post(url, json=training(data, save_path="../../escape")), 400, "save_path", "outside")
    os.symlink("/etc", api.home / "data" / "etc-link")
    fail(http.post(url, json=training(data, val_path="data/etc-link")), 400, "val_path", "outside")
    fail(http.post(url, json=training(data, train_path="data/missing")), 400, "does not exist")
    fail(http.post(url, json=training(data, weight_path="file:///etc/passwd")), 400, "weight_path")
    task = ok(http.post(url, json=training(data, train_path="https://example.org/train.zip")))
    assert task["params"]["train_path"] == "https://example.org/train.zip"
    ok(http.post(f"/api/v2/tasks/{task['task_id']}/cancel"))


def test_body_size_limit(http: httpx.Client, data: Path) -> None:
    big = training(data, description="x" * (1 << 20))
    fail(http.post("/api/v2/training/start", json=big), 413, "exceeds the limit")

    def chunks() -> Iterator[bytes]:  # no Content-Length: the streamed size is what counts
        yield b'{"description": "'
        for _ in range(300):
            yield b"y" * 4096
        yield b'"}'

    fail(http.post("/api/v2/training/start", content=chunks(), headers={"content-type": "application/json"}),
         413, "exceeds the limit")  # fmt: skip


# -- inference ------------------------------------------------------------------------------
def test_inference_and_batch(http: httpx.Client, data: Path, api: Service) -> None:
    body = {"cfg_path": "data/model.yaml", "weight_path": "data/best.pth", "source_path": "data/val/a"}
    task = ok(http.post("/api/v2/inference/start", json=body))
    assert task["task_type"] == "inference" and task["priority"] == 3 and task["res"] is None
    assert task["current_epoch"] is None and task["latest_metrics"] is None
    assert ok(http.get(f"/api/v2/inference/{task['task_id']}"))["task_id"] == task["task_id"]
    fail(http.get(f"/api/v2/training/{task['task_id']}"), 404)
    ok(http.post(f"/api/v2/tasks/{task['task_id']}/cancel"))

    batch = ok(http.post("/api/v2/inference/batch", json={
        "cfg_path": "data/model.yaml", "weight_path": "data/best.pth",
        "source_paths": ["data/val/a", "data/val/b", "data/train/a"], "save_base_path": "results",
    }))  # fmt: skip
    assert batch["status"] == "success" and batch["total"] == 3 and len(set(batch["task_ids"])) == 3
    for task_id in batch["task_ids"]:
        t = ok(http.get(f"/api/v2/inference/{task_id}"))
        assert t["params"]["name"] == task_id
        assert t["params"]["save_path"] == str((api.home / "results").resolve())
        ok(http.post(f"/api/v2/tasks/{task_id}/cancel"))
    fail(http.post("/api/v2/inference/batch", json={"cfg_path": "data/model.yaml", "weight_path": "data/best.pth",
                                                    "source_paths": []}), 400, "source_paths")  # fmt: skip
    bad = fail(http.post("/api/v2/inference/batch", json={
        "cfg_path": "data/model.yaml", "weight_path": "data/best.pth", "source_paths": ["data/val/a", "/etc"]}),
        400, "source_paths.1")  # fmt: skip
    assert bad["data"]["errors"][0]["field"] == "source_paths.1"


# -- preprocessing --------------------------------------------------------------------------
def test_preprocessing(http: httpx.Client, data: Path) -> None:
    split = ok(http.post("/api/v2/preprocessing/split", json={"input_path": "data/train", "output_path": "split"}))
    assert split["task_type"] == "preprocessing" and split["params"]["train_ratio"] == 0.7
    assert split["params"]["val_ratio"] == 0.2 and split["params"]["seed"] == 42
    aug = ok(http.post("/api/v2/preprocessing/augment", json={
        "dataset_path": "data/train", "output_path": "aug", "methods": list(AUGMENT_METHODS)}))  # fmt: skip
    crop = ok(http.post("/api/v2/preprocessing/crop", json={
        "input_path": "data/train", "output_path": "crop", "x": 0, "y": 0, "width": 4, "height": 4}))  # fmt: skip
    for task in (split, aug, crop):
        assert ok(http.get(f"/api/v2/preprocessing/{task['task_id']}"))["job"] in ("split", "augment", "crop")
        ok(http.post(f"/api/v2/tasks/{task['task_id']}/cancel"))
    fail(http.post("/api/v2/preprocessing/augment", json={
        "dataset_path": "data/train", "output_path": "aug", "methods": ["Mosaic"]}), 400, "unknown augmentation method")  # fmt: skip
    fail(http.post("/api/v2/preprocessing/crop", json={
        "input_path": "data/train", "output_path": "/tmp/crop", "x": 0, "y": 0, "width": 4, "height": 4}),
        400, "output_path", "outside")  # fmt: skip
    fail(http.post("/api/v2/preprocessing/split", json={
        "input_path": "data/train", "output_path": "s", "train_ratio": 0.9, "val_ratio": 0.2}), 400, "val_ratio")  # fmt: skip


# -- tasks, resources -----------------------------------------------------------------------
def test_diagnostic_task_runs_and_logs_are_a_json_array(http: httpx.Client, api: Service, data: Path) -> None:
    task = ok(http.post("/api/v2/diagnostic/start", json={"events": 5}))
    waiting = ok(http.post("/api/v2/training/start", json=training(data)))  # pending: CPU training limit 0
    final = api.client.wait_for(task["task_id"], timeout=60)
    assert final["status"] == "completed", final
    events = ok(http.get(f"/api/v2/tasks/{task['task_id']}/logs"))
    assert isinstance(events, list) and [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert sum(e["message"].startswith("event ") for e in events) == 5
    assert all({"timestamp", "level", "message"} <= set(e) and "rseq" not in e for e in events)
    assert ok(http.get(f"/api/v2/tasks/{task['task_id']}/logs", params={"after": 3}))[0]["seq"] == 4
    fail(http.get(f"/api/v2/tasks/{task['task_id']}/logs", params={"after": "x"}), 400, "after")
    assert ok(http.get(f"/api/v2/tasks/{task['task_id']}/logs", params={"after": 2**53, "limit": 2**53})) == []
    # Every integer parameter takes ASCII digits in a sane range, else a 400 naming it (never a 500).
    for name in ("after", "limit"):
        for bad in ("²", "١", "９", "1_0", " 1x", "1.0", "0x1", str(2**53 + 1), str(2**63), str(2**64), "9" * 40):
            body = fail(http.get(f"/api/v2/tasks/{task['task_id']}/logs", params={name: bad}), 400, name)
            assert body["data"]["errors"][0]["field"] == name, (name, bad, body)
    fail(http.get(f"/api/v2/tasks/{task['task_id']}/logs?after=%C2%B2"), 400, "after")
    fail(http.get(f"/api/v2/tasks/{task['task_id']}/logs?after="), 400, "after")
    fail(http.get(f"/api/v2/tasks/{task['task_id']}/logs", params={"limit": 0}), 400, "limit: must be >= 1")

    listing = ok(http.get("/api/v2/tasks"))
    for key in ("training_tasks", "inference_tasks", "preprocessing_tasks", "total_training", "total_inference"):
        assert key in listing
    assert listing["total_training"] == len(listing["training_tasks"])
    assert any(t["task_id"] == task["task_id"] for t in listing["diagnostic_tasks"])

    # The filters: the completed diagnostic task is in the completed list, the pending training
    # task is not (and the other way round).
    def listed(**params: str) -> set[str]:
        found = ok(http.get("/api/v2/tasks", params=params))
        assert all(
            t["status"] == params.get("status", t["status"])
            for k, v in found.items()
            if k.endswith("_tasks")
            for t in v
        )
        return {t["task_id"] for k, v in found.items() if k.endswith("_tasks") for t in v}

    done, pending = listed(status="completed"), listed(status="pending")
    assert task["task_id"] in done and waiting["task_id"] not in done
    assert waiting["task_id"] in pending and task["task_id"] not in pending
    assert task["task_id"] in listed(task_type="diagnostic") and waiting["task_id"] not in listed(
        task_type="diagnostic"
    )
    ok(http.post(f"/api/v2/tasks/{waiting['task_id']}/cancel"))
    fail(http.get("/api/v2/tasks", params={"status": "weird"}), 400, "status")


def test_resources_gpu_limits_runners(http: httpx.Client) -> None:
    res = ok(http.get("/api/v2/resources"))
    assert set(res) >= {"device_usage", "active_tasks", "limits", "gpu_info"}
    assert res["limits"]["cpu"]["training"] == 0
    gpu = ok(http.get("/api/v2/resources/gpu"))
    assert gpu["available"] is bool(GPUS) and gpu["count"] == len(GPUS)
    assert [(d["id"], d["device_name"], d["name"]) for d in gpu["devices"]] == [
        (i, f"cuda:{i}", name) for i, name in enumerate(GPUS)
    ]
    changed = ok(http.post("/api/v2/resources/config", json={"max_concurrent": {"cpu": {"diagnostic": 7}}}))
    assert changed["status"] == "success" and changed["current_config"]["cpu"]["diagnostic"] == 7
    assert ok(http.get("/api/v2/resources"))["limits"]["cpu"]["diagnostic"] == 7
    ok(http.post("/api/v2/resources/config", json={"max_concurrent": {"cpu": {"diagnostic": 8}}}))
    fail(
        http.post("/api/v2/resources/config", json={"max_concurrent": {"cpu": {"training": -1}}}),
        400,
        "must be between 0 and 10000",
    )
    fail(http.post("/api/v2/resources/config", json={"limits": {}}), 400, "max_concurrent: is required")
    fail(http.post("/api/v2/resources/config", json={"max_concurrent": {"cpu": {"juggling": 1}}}), 400)


def test_runners_show_a_running_task(http: httpx.Client, api: Service) -> None:
    task = ok(http.post("/api/v2/diagnostic/start", json={"sleep": 60}))
    try:
        # "running" is recorded as the runner starts; its pid once it has one.
        running = api.client.wait_for(
            task["task_id"], timeout=60, predicate=lambda t: t["status"] == "running" and t["pid"] is not None
        )
        mine = [r for r in ok(http.get("/api/v2/runners"))["runners"] if r["task_id"] == task["task_id"]]
        assert len(mine) == 1 and mine[0]["pid"] == running["pid"], mine
        assert mine[0]["task_type"] == "diagnostic" and mine[0]["device"] == "cpu"
        assert any(p["pid"] == running["pid"] for p in mine[0]["processes"]), mine
    finally:
        ok(http.post(f"/api/v2/tasks/{task['task_id']}/cancel"))
    assert api.client.wait_for(task["task_id"], timeout=60)["status"] == "cancelled"
    assert all(r["task_id"] != task["task_id"] for r in ok(http.get("/api/v2/runners"))["runners"])


def test_client_methods(api: Service, data: Path) -> None:
    from web.client import RFUAVError

    c = api.client
    task = c.start_training(model="resnet18", num_classes=2, train_path="data/train", val_path="data/val",
                            save_path="models/c", num_epochs=2)  # fmt: skip
    assert c.get_task(task["task_id"])["total_epochs"] == 2
    assert c.get_training(task["task_id"])["status"] == "pending"
    assert c.stop_training(task["task_id"])["status"] == "success"
    assert c.delete_task(task["task_id"])["task_id"] == task["task_id"]
    with pytest.raises(RFUAVError) as info:
        c.get_task(task["task_id"])
    assert info.value.code == 404 and task["task_id"] in info.value.msg
    with pytest.raises(RFUAVError) as info:
        c.start_training(model="nope", num_classes=2, train_path="data/train", val_path="data/val", save_path="m")
    assert info.value.code == 400 and "unknown model" in info.value.msg
    assert c.get_gpu_info()["count"] == len(GPUS)
    assert "limits" in c.get_resources()
    assert "training_tasks" in c.get_all_tasks()
    assert c.health()["status"] == "healthy" and c.info()["version"]
    for fn, kw in ((c.split_dataset, {"input_path": "data/train", "output_path": "o1"}),
                   (c.augment_dataset, {"dataset_path": "data/train", "output_path": "o2", "methods": ["CLAHE"]}),
                   (c.crop_images, {"input_path": "data/train", "output_path": "o3", "x": 0, "y": 0, "width": 2, "height": 2}),
                   (c.start_inference, {"cfg_path": "data/model.yaml", "weight_path": "data/best.pth", "source_path": "data/val"})):  # fmt: skip
        t = fn(**kw)  # type: ignore[operator]
        assert c.cancel_task(t["task_id"])["status"] == "success"
    b = c.start_batch_inference(cfg_path="data/model.yaml", weight_path="data/best.pth", source_paths=["data/val"])
    assert b["total"] == 1
    c.cancel_task(b["task_ids"][0])


# -- auth -----------------------------------------------------------------------------------
@pytest.mark.timeout(120)
def test_bearer_token(make_service: Any) -> None:
    svc = make_service(RFUAV_API_TOKEN="let-me-in")
    protected = [r for r in ROUTES if r.auth]
    # The middleware guards by prefix: every route that needs the token is under /api/v2 (or is
    # the article's /predict, /predict_batch), and every such route needs it.
    assert protected == [r for r in ROUTES if r.path.startswith(PROTECTED_PREFIX)] and len(protected) >= 20
    assert {"/predict", "/predict_batch"} <= {r.path for r in protected}
    with httpx.Client(base_url=svc.base_url, timeout=10) as http:
        for route in protected:
            path = route.path.replace("{task_id}", "some-task").replace("{name}", "some-name")
            for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic let-me-in"},
                            {"Authorization": "let-me-in"}, {"Authorization": "Bearer let-me-in-too"}):  # fmt: skip
                kwargs: dict[str, Any] = {"json": {}} if route.method == "POST" else {}
                body = fail(http.request(route.method, path, headers=headers, **kwargs), 401, "unauthorized")
                assert "let-me-in" not in body["msg"], (route.method, path, headers)
        # Open without a token: the probes, the metrics, the docs and the pages.
        for route in [r for r in ROUTES if not r.auth]:
            assert route.method == "GET"
            r = http.get(route.path)
            assert r.status_code == 200, (route.path, r.status_code, r.text[:200])
        for path in ("/api/v1/health", "/api/v1/info", "/metrics", "/docs", "/openapi.json", "/", "/favicon.ico",
                     "/static/docs/swagger-ui.css"):  # fmt: skip
            assert http.get(path).status_code == 200, path
        ok(http.get("/api/v2/tasks", headers={"Authorization": "Bearer let-me-in"}))
    assert svc.client.get_all_tasks()["total_training"] == 0  # the client sends its token
