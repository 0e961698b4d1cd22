"""``rfuavd``: bad settings, systemd notifications, and ``rfuavd all`` (supervisor + web)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.support.supervisor import REPO, SupervisorProcess


def test_bad_setting_is_one_line_exit_2(tmp_path: Path) -> None:
    env = {**os.environ, "RFUAV_HOME": str(tmp_path), "RFUAV_GRACE_SECONDS": "soon", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "supervisor", "supervisor"],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "rfuavd: bad setting: RFUAV_GRACE_SECONDS='soon': could not convert string to float: 'soon'"
    ]


@pytest.mark.timeout(120)
def test_notify_ready_status_stopping() -> None:
    directory = Path(tempfile.mkdtemp(prefix="rfn", dir="/tmp"))
    path = directory / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(60)
    sup = SupervisorProcess(env={"RFUAV_START_MODE": "cold", "NOTIFY_SOCKET": str(path)})
    try:
        sup.start()
        messages = [sock.recv(4096).decode()]
        assert "READY=1" in messages[0].splitlines() and f"MAINPID={sup.pid}" in messages[0]
        task_id = sup.submit(params={"sleep": 0.2})
        sup.wait_final(task_id)
        while not any("STATUS=0 running, 0 queued" in m for m in messages[1:]):
            messages.append(sock.recv(4096).decode())
        assert any("STATUS=1 running, 0 queued" in m for m in messages)
        assert sup.stop() == 0
        while not any("STOPPING=1" in m for m in messages):
            messages.append(sock.recv(4096).decode())
    finally:
        sup.close()
        sock.close()
        path.unlink()
        directory.rmdir()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children(pid: int) -> dict[str, psutil.Process]:
    out = {}
    for child in psutil.Process(pid).children():
        # The supervisor retitles itself "rfuavd supervisor"; web keeps "... -m web".
        words = " ".join(child.cmdline()).split()
        out["web" if words[-1] == "web" else "supervisor"] = child
    return out


def _listening(proc: psutil.Process, port: int) -> list[str]:
    """The addresses ``proc`` listens on at ``port``."""
    return [
        c.laddr.ip for c in proc.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    ]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("how", ["sigterm", "child_dies"])
def test_rfuavd_all(how: str) -> None:
    port = _free_port()
    # No RFUAV_HOST (SupervisorProcess passes no RFUAV_ variable of ours): the default applies.
    sup = SupervisorProcess(env={"RFUAV_START_MODE": "cold", "RFUAV_PORT": str(port)}, command="all")
    assert "RFUAV_HOST" not in sup.env
    try:
        sup.start()
        children = _children(sup.pid)
        assert set(children) == {"supervisor", "web"}
        if how == "sigterm":
            # The default bind address is loopback only: web answers there and listens nowhere else.
            deadline = time.monotonic() + 60
            while not _listening(children["web"], port):
                assert time.monotonic() < deadline, f"web not listening on {port}:\n{sup.log_text()}"
                with pytest.raises(psutil.TimeoutExpired):
                    children["web"].wait(0.05)  # between two looks, wait on web itself: a crash fails at once
            assert _listening(children["web"], port) == ["127.0.0.1"]
            assert httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=10).status_code == 200
            assert sup.kill(signal.SIGTERM) == 0
        else:
            children["web"].kill()
            assert sup.proc is not None
            assert sup.proc.wait(60) == 1
        for child in children.values():
            child.wait(30)  # psutil: raises TimeoutExpired if it were still alive
            assert not child.is_running()
    finally:
        sup.close()


def test_second_daemon_on_same_home_refuses(supervisor: SupervisorProcess) -> None:
    runtime = tempfile.mkdtemp(prefix="rf2", dir="/tmp")
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "supervisor", "supervisor"],
            check=False,
            env={**supervisor.env, "RFUAV_RUNTIME_DIR": runtime},
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        shutil.rmtree(runtime, ignore_errors=True)
    assert proc.returncode == 1
    assert f"another supervisor (pid {supervisor.pid}) is running" in proc.stderr
    assert supervisor.call("health")["running"] == 0
