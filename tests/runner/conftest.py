"""Fixtures of the job tests: small real datasets on disk, and a short task directory per test.

Jobs run in real runner processes (``tests.runner.harness.RunnerProcess``); one thread each,
because the machine has two cores shared by everyone.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support import datasets

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Digits as PNG ImageFolder: train (42 per class), val (14), test (14); 10 classes."""
    return datasets.digits(
        tmp_path_factory.mktemp("digits"), size=16, per_class=70, seed=0
    )


@pytest.fixture(scope="session")
def spectro(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic RF spectrograms: carrier, chirp, hopping; 12 of each, 48x48 RGB."""
    return datasets.spectrograms(
        tmp_path_factory.mktemp("spectro") / "data", per_class=12, size=48, seed=0
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "slow: a test of minutes on two cores (deselect with -m 'not slow')"
    )
