"""Fixtures of the job tests: small real datasets on disk, and one trained model per session.

Jobs run in real runner processes (``tests.runner.harness.RunnerProcess``); one thread each,
because the machine has two cores shared by everyone.

``trained`` (session): one training run of resnet18 on the digits (``TRAIN_EPOCHS`` epochs, 32 px)
with an upload to ``training_satellite`` (whose first request fails); test_training checks the
run, test_inference uses its config and weights.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.runner.harness import run_job
from tests.runner.satellite import Satellite
from tests.support import datasets

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Digits as PNG ImageFolder: train (42 per class), val (14), test (14); 10 classes."""
    return datasets.digits(tmp_path_factory.mktemp("digits"), size=16, per_class=70, seed=0)


@pytest.fixture(scope="session")
def spectro(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic RF spectrograms: carrier, chirp, hopping; 12 of each, 48x48 RGB."""
    return datasets.spectrograms(tmp_path_factory.mktemp("spectro") / "data", per_class=12, size=48, seed=0)


TRAIN_EPOCHS = 3
TRAIN_TOKEN = "tok-3f9a-never-logged"


@pytest.fixture(scope="session")
def training_satellite() -> Iterator[Satellite]:
    sat = Satellite(fail_first=1)  # the first upload gets a 500, its retry a 200
    yield sat
    sat.close()


@pytest.fixture(scope="session")
def trained(
    digits: dict[str, Path],
    training_satellite: Satellite,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("train")
    params = {
        "model": "resnet18", "num_classes": 10, "train_path": str(digits["train"]), "val_path": str(digits["val"]),
        "save_path": str(root / "runs"), "name": "digits", "batch_size": 16, "num_epochs": TRAIN_EPOCHS,
        "learning_rate": 1e-3, "image_size": 32, "pretrained": True, "shuffle": True, "seed": 7, "augment": False,
        "enable_upload": True, "upload_url": training_satellite.url, "token": TRAIN_TOKEN,
    }  # fmt: skip
    config = {
        "data_roots": [str(root), str(digits["train"].parent)],
        "upload_retries": 2,
        "url_allow_loopback": True,  # the satellite listens on 127.0.0.1
    }
    rp = run_job("training", params, root / "task", timeout=280, torch_threads=1, config=config, batch_cap=None)
    return {"rp": rp, "out": root / "runs" / "digits", "params": params, "root": root}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: a test of minutes on two cores (deselect with -m 'not slow')")
