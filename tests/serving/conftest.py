"""Fixtures of the serving tests: one real service per module (warm starts from the fork
server) and a model written without training (``tests.support.models``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.models import write_model
from tests.support.service import Service

#: The image size of the test model (resnet18 at 32 px: a forward pass in milliseconds).
SIZE = 32


@pytest.fixture(scope="module")
def svc(request: pytest.FixtureRequest) -> Iterator[Service]:
    service = Service(env={"RFUAV_START_MODE": "warm", "RFUAV_GRACE_SECONDS": "5"}).start()
    yield service
    if request.session.testsfailed:
        print(f"--- web log ---\n{service.web_log_text()[-8000:]}")
        print(f"--- supervisor log ---\n{service.supervisor.log_text()[-12000:]}")
    service.close()


@pytest.fixture(scope="module")
def model(svc: Service) -> tuple[Path, Path]:
    """``(cfg_path, weight_path)`` of a 3-class resnet18 (classes a, b, c) in the service's home."""
    return write_model(svc.home / "model", image_size=SIZE, class_names=("a", "b", "c"))
