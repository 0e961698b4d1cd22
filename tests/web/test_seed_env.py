"""The original service's ``.env`` configures a running service (supervisor and web): the file
its README shows (``tests/support/seed.env``), copied as is through ``RFUAV_ENV_FILE``, then a
copy with other values as ``./.env`` in the daemons' working directory. Seed names fill what
the ``RFUAV_*`` names leave unset (the harness's ``RFUAV_HOST``/``RFUAV_PORT`` win over the
file's ``HOST="0.0.0.0"``/``PORT=8000``)."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.datasets import digits
from tests.support.service import Service

SEED_ENV = Path(__file__).resolve().parents[1] / "support" / "seed.env"

pytestmark = [pytest.mark.timeout(240)]


@pytest.fixture()
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="rfuav-cwd-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _data(svc: Service, path: str) -> dict:  # type: ignore[type-arg]
    r = httpx.get(svc.url(path), timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["data"]  # type: ignore[no-any-return]


def _run(svc: Service, check) -> None:  # type: ignore[no-untyped-def]
    """Start ``svc``, run ``check(svc)``, print both logs when it fails, stop it."""
    svc.start()
    try:
        check(svc)
    except BaseException:
        print(f"--- web log ---\n{svc.web_log_text()[-10000:]}")
        print(f"--- supervisor log ---\n{svc.supervisor.log_text()[-10000:]}")
        raise
    finally:
        svc.close()


def test_the_seed_env_copied_as_is(tmp_path: Path) -> None:
    env_file = tmp_path / "seed.env"
    shutil.copy(SEED_ENV, env_file)

    def check(svc: Service) -> None:
        info = _data(svc, "/api/v1/info")
        assert (info["app_name"], info["version"], info["environment"]) == (
            "RFUAV Model Service",
            "1.0.0",
            "production",
        )
        assert info["supported_models"] == ["resnet18", "resnet50", "vit_b_16"]
        assert info["resource_limits"] == {"max_training_concurrent_gpu": 1, "max_inference_concurrent_gpu": 3}
        assert _data(svc, "/api/v1/health")["version"] == "1.0.0"
        assert " DEBUG " not in svc.supervisor.log_text()  # DEBUG=false
        assert {k: v for k, v in _data(svc, "/api/v2/resources")["limits"]["cpu"].items() if k != "diagnostic"} == {
            "training": 2, "inference": 4, "preprocessing": 2, "serving": 8,
        }  # fmt: skip
        # A model of the catalogue that SUPPORTED_MODELS leaves out: 400 naming `model`.
        body = {"model": "alexnet", "num_classes": 2, "train_path": ".", "val_path": ".", "save_path": "out"}
        r = httpx.post(svc.url("/api/v2/training/start"), json=body, timeout=30)
        assert r.status_code == 400, r.text
        assert r.json()["data"]["errors"] == [
            {
                "field": "model",
                "error": "unsupported model 'alexnet'; this service supports: resnet18, resnet50, vit_b_16",
            }
        ]

    _run(svc=Service(env={"RFUAV_ENV_FILE": str(env_file)}), check=check)


def test_a_seed_env_in_the_working_directory(workdir: Path) -> None:
    changes = {
        'APP_NAME="RFUAV Model Service"': 'APP_NAME="RFUAV Satellite Models"',
        "DEBUG=false": "DEBUG=true",
        "MAX_TRAINING_CONCURRENT_CPU=2": "MAX_TRAINING_CONCURRENT_CPU=1",
        "MAX_INFERENCE_CONCURRENT_CPU=4": "MAX_INFERENCE_CONCURRENT_CPU=0",
        "CPU_TRAINING_MAX_BATCH_SIZE=8": "CPU_TRAINING_MAX_BATCH_SIZE=2",
        "DEFAULT_TRAIN_PRIORITY=5": "DEFAULT_TRAIN_PRIORITY=7",
        "DEFAULT_INFERENCE_PRIORITY=3": "DEFAULT_INFERENCE_PRIORITY=2",
    }
    text = SEED_ENV.read_text()
    for old, new in changes.items():
        assert old in text
        text = text.replace(old, new)
    (workdir / ".env").write_text(text)

    def check(svc: Service) -> None:
        assert _data(svc, "/api/v1/info")["app_name"] == "RFUAV Satellite Models"
        assert " DEBUG " in svc.supervisor.log_text()  # DEBUG=true: the daemon logs at DEBUG level
        limits = _data(svc, "/api/v2/resources")["limits"]["cpu"]
        assert (limits["training"], limits["inference"]) == (1, 0)
        # A request without a priority gets the seed's default for its kind; one with, its own.
        data = digits(svc.home / "digits", per_class=6, size=16)
        train = {"train_path": str(data["train"]), "val_path": str(data["val"]), "save_path": str(svc.home / "m")}
        task = svc.client.start_training("resnet18", 10, **train, batch_size=8, num_epochs=1, image_size=32,
                                         device="cpu", pretrained=False)  # fmt: skip
        assert task["priority"] == 7
        model = svc.home / "m.yaml"
        model.write_text("model: resnet18\n")
        infer = svc.client.start_inference(str(model), str(model), str(data["val"]), device="cpu")
        explicit = svc.client.start_inference(str(model), str(model), str(data["val"]), device="cpu", priority=9)
        assert (infer["priority"], explicit["priority"], infer["status"]) == (2, 9, "pending")
        # CPU_TRAINING_MAX_BATCH_SIZE: the clamp is in the task's log, as for RFUAV_CPU_BATCH_CAP.
        clamped = ""
        for event in svc.client.stream_events(task["task_id"], deadline=time.monotonic() + 180):
            if "clamped" in event["message"]:
                clamped = event["message"]
                break
        assert clamped.startswith("batch_size 8 clamped to 2 for training on the CPU"), clamped
        for task_id in (task["task_id"], infer["task_id"], explicit["task_id"]):
            svc.client.cancel_task(task_id)
        assert svc.client.wait_for(task["task_id"], timeout=60)["status"] in ("cancelled", "completed", "failed")

    _run(svc=Service(env={"RFUAV_ENV_FILE": ""}, cwd=workdir), check=check)
