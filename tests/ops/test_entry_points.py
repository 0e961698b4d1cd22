"""How the processes start, and which package may import which.

- ``python -m web`` runs the web front end; ``rfuavd web`` becomes it (exec: the same process,
  so systemd's ``Type=exec`` unit and its signals reach web itself).
- The supervisor never imports web (it starts it by module name); web never imports the
  supervisor, the runner or torch (it talks to the supervisor over sockets only).
"""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest

from tests.support.service import free_port

from .conftest import REPO

pytestmark = pytest.mark.timeout(120)


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RFUAV_")}
    env.update(RFUAV_HOME=str(home), RFUAV_RUNTIME_DIR=str(home / "run"), PYTHONPATH=str(REPO), **extra)
    return env


def _imports(package: str) -> set[str]:
    """Every module any file of ``package`` imports (top level and inside functions)."""
    found: set[str] = set()
    for path in (REPO / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
    return found


def _top(modules: set[str]) -> set[str]:
    return {m.split(".")[0] for m in modules}


def test_web_and_supervisor_share_only_protocol() -> None:
    assert not _top(_imports("supervisor")) & {"web"}
    assert not _top(_imports("web")) & {"supervisor", "runner", "torch", "torchvision"}


def test_web_loads_no_supervisor_runner_or_torch() -> None:
    # What the modules import when they run, protocol's imports included.
    code = (
        "import sys, web.app, web.cli, web.__main__\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('supervisor', 'runner', 'torch'))\n"
        "print(','.join(bad))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert proc.stdout.strip() == ""


def test_python_m_web_refuses_a_bad_setting(short_tmp: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "web"], check=False, capture_output=True, text=True, timeout=60, cwd=REPO,
        env=_env(short_tmp, RFUAV_PORT="eighty"),
    )  # fmt: skip
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("web: bad setting: RFUAV_PORT='eighty'"), proc.stderr


def test_rfuavd_web_becomes_python_m_web(short_tmp: Path) -> None:
    """``rfuavd web`` execs ``python -m web``: the pid it was started as serves HTTP (here without
    a supervisor: health answers 503), and SIGTERM stops it."""
    port = free_port()
    log = short_tmp / "web.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "supervisor", "web"], cwd=REPO, env=_env(short_tmp, RFUAV_PORT=str(port)),
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    try:
        answer = None
        with httpx.Client(timeout=5.0) as http:
            while answer is None:
                try:
                    answer = http.get(f"http://127.0.0.1:{port}/api/v1/health")
                except httpx.TransportError:
                    # Between two looks, wait on the process itself: a crash fails at once.
                    with pytest.raises(subprocess.TimeoutExpired, match="timed out"):
                        proc.wait(0.05)
        assert answer.status_code == 503 and answer.json()["data"]["supervisor"] == "unreachable"
        assert psutil.Process(proc.pid).cmdline()[-2:] == ["-m", "web"], log.read_text()
        proc.send_signal(signal.SIGTERM)
        # uvicorn re-raises the signal it handled once it has shut down.
        assert proc.wait(30) in (0, -signal.SIGTERM), log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
