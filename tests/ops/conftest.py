"""Fixtures of the ops tests: short temp dirs, a running service, a tiny image dataset."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"


@pytest.fixture()
def short_tmp() -> Iterator[Path]:
    """A short directory under /tmp: AF_UNIX paths must stay under 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="rf", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)
