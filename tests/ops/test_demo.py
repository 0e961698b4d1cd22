"""``make demo`` (``python -m deploy.demo``) end to end: the real service on a temp home, real
data, split, training, inference; then a clean stop that leaves no process behind. And a Ctrl-C
in the middle of the training stops the service too."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil  # type: ignore[import-untyped]
import pytest

REPO = Path(__file__).resolve().parents[2]


def _processes_of(home: Path) -> list[int]:
    """Live processes started for the service of ``home`` (each inherits its RFUAV_HOME)."""
    pids = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("RFUAV_HOME") == str(home) and proc.status() != psutil.STATUS_ZOMBIE:
                pids.append(proc.pid)
        except psutil.Error:
            continue
    return pids


def _start(home: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "deploy.demo", "--home", str(home), *args], cwd=str(REPO), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )  # fmt: skip


class _Lines:
    """The demo's output lines as they come (a reader thread), waited on under deadlines."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def _next(self, deadline: float) -> str | None:
        """The next line, or None at the end of the output or the deadline."""
        try:
            line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return None
        if line is not None:
            self.seen.append(line.rstrip("\n"))
        return line

    def wait_for(self, text: str, timeout: float) -> str:
        """The next line that holds ``text``."""
        deadline = time.monotonic() + timeout
        while (line := self._next(deadline)) is not None:
            if text in line:
                return line
        raise AssertionError(f"no line with {text!r} within {timeout} s:\n" + "\n".join(self.seen[-40:]))

    def rest(self, timeout: float) -> list[str]:
        """Every line, once the output ended (or the deadline passed)."""
        deadline = time.monotonic() + timeout
        while self._next(deadline) is not None:
            pass
        return self.seen


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_demo_trains_infers_and_stops_cleanly(tmp_path: Path) -> None:
    home = tmp_path / "demo"
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "deploy.demo", "--home", str(home), "--epochs", "2", "--per-class", "40"],
        cwd=str(REPO), capture_output=True, text=True, timeout=200, check=False,
    )  # fmt: skip
    took = time.monotonic() - started
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    lines = proc.stdout.splitlines()
    assert any(line.startswith("split (") and "96 train, 32 val, 32 test images" in line for line in lines), out
    # The `rfuav logs -f` view: per epoch the training summary, the validation and the epoch's end.
    for epoch in (1, 2):
        assert any(f"INFO    training {epoch}/2: train_loss " in line for line in lines), out
        assert any(f"INFO    validation {epoch}/2: val_loss " in line for line in lines), out
    trained = next(line for line in lines if line.startswith("trained ("))
    assert " val_acc " in trained and "%" in trained
    assert (home / "models" / "demo" / "best.pth").is_file() and (home / "models" / "demo" / "config.yaml").is_file()
    inferred = next(line for line in lines if line.startswith("inferred ("))
    assert "32 test images" in inferred
    results = json.loads((home / "results" / "demo" / "results.json").read_text())
    assert results["summary"]["count"] == 32 and len(results["results"]) == 32
    deployed = next(line for line in lines if line.startswith("deployed 'demo' ("))
    assert "version 1, 2 replicas" in deployed and "on cpu" in deployed
    predicted = [line for line in lines if line.startswith("  predict ")]
    assert len(predicted) == 4 and all(" ms" in line for line in predicted), lines
    assert any(line.startswith("  predict_batch: 32 test images, ") for line in lines), lines
    task_id = trained.split("(")[1].split(")")[0]
    assert f"#task={task_id}" in out and f"rfuav show {task_id}" in out  # where to look
    assert "demo: service stopped: exit 0" in out and "no process left" in out
    assert _processes_of(home) == []
    print(f"demo: {took:.1f} s")


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_ctrl_c_during_training_stops_the_service(tmp_path: Path) -> None:
    home = tmp_path / "demo"
    proc = _start(home, "--epochs", "50", "--per-class", "20")
    try:
        lines = _Lines(proc)
        lines.wait_for("INFO    epoch 1/50 batch ", timeout=150)  # training, in the runner
        assert _processes_of(home)
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends the demo (the service has a session of its own)
        code = proc.wait(timeout=60)
        out = lines.rest(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 130, out[-40:]
    assert "demo: interrupted" in out and "demo: stopping the service (SIGTERM)" in out
    assert any(line.startswith("demo: service stopped: exit 0") for line in out), out[-20:]
    assert _processes_of(home) == []
