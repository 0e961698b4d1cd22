"""``supervisor.heap.keep_freed_memory``: freed blocks stay in the heap (no page faults again).

Measured in a fresh interpreter each (the thresholds are process-wide): a pattern of four 1 MiB
buffers made and freed, over and over, which glibc's default thresholds trim back to the system
after each round, so every round faults its pages in again.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

SCRIPT = """
import resource, sys
from supervisor.heap import keep_freed_memory
took = keep_freed_memory() if sys.argv[1] == "keep" else None
MIB = 1 << 20
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def round_():
    held = [b"\\x01" * MIB for _ in range(4)]  # (written: every page touched)
    del held
for _ in range(3):
    round_()
before = faults()
for _ in range(20):
    round_()
print(took, (faults() - before) / 20)
"""


def _faults_per_round(mode: str) -> tuple[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], cwd=REPO, capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    return out[0], float(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt thresholds are glibc's (Linux)")
def test_freed_memory_is_reused_without_page_faults() -> None:
    took, kept = _faults_per_round("keep")
    _, default = _faults_per_round("default")
    assert took == "True"
    # By default each round faults its 4 MiB in again (1,024 pages of 4 KiB; at least a quarter
    # of them, whatever the page size); kept, the heap serves them from pages already there.
    assert default >= 256, default
    assert kept < 16, kept
