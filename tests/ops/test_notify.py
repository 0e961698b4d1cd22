"""sd_notify against a real AF_UNIX datagram socket (path and abstract namespace)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor import notify

pytestmark = pytest.mark.timeout(30)


@pytest.fixture()
def listener(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A bound datagram socket standing in for systemd, named by NOTIFY_SOCKET."""
    path = short_tmp / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    yield sock
    sock.close()


def _fields(sock: socket.socket) -> dict[str, str]:
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.split("\n"))


def test_ready_status_watchdog_stopping_arrive_in_order(listener: socket.socket) -> None:
    assert notify.enabled()
    assert notify.ready("serving; running=0 queued=0")
    got = _fields(listener)
    assert got == {"READY": "1", "MAINPID": str(os.getpid()), "STATUS": "serving; running=0 queued=0"}
    assert notify.status("running=2 queued=5")
    assert _fields(listener) == {"STATUS": "running=2 queued=5"}
    assert notify.watchdog()
    assert _fields(listener) == {"WATCHDOG": "1"}
    assert notify.stopping("stopping: cancelling 2 jobs")
    assert _fields(listener) == {"STOPPING": "1", "STATUS": "stopping: cancelling 2 jobs"}


def test_status_stays_one_line(listener: socket.socket) -> None:
    notify.status("line one\nline two")
    assert _fields(listener) == {"STATUS": "line one line two"}


def test_abstract_namespace_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"rfuav-test-{os.getpid()}-{id(monkeypatch)}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(5)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify.ready()
        assert _fields(sock)["READY"] == "1"
    finally:
        sock.close()


def test_everything_is_a_noop_without_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert not notify.enabled()
    assert notify.ready() is False
    assert notify.status("x") is False
    assert notify.watchdog() is False
    assert notify.stopping() is False
    assert notify.watchdog_interval() is None


def test_send_failure_is_swallowed(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # systemd went away: the socket path no longer exists. The daemon must keep serving.
    monkeypatch.setenv("NOTIFY_SOCKET", str(short_tmp / "gone.sock"))
    assert notify.ready() is False
    assert notify.watchdog() is False


def test_bad_assignment_is_a_programming_error(listener: socket.socket) -> None:
    with pytest.raises(ValueError, match="KEY=value"):
        notify.notify("READY")


def test_watchdog_interval_is_half_the_timeout_for_our_pid(listener: socket.socket) -> None:
    env = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
    assert notify.watchdog_interval(env) == 15.0
    # No WATCHDOG_PID: the watchdog is ours (older systemd omits it).
    assert notify.watchdog_interval({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "2000000"}) == 1.0
    # Inherited from a parent: another process must ping, not us.
    assert notify.watchdog_interval({**env, "WATCHDOG_PID": str(os.getpid() + 1)}) is None
    assert notify.watchdog_interval({**env, "WATCHDOG_USEC": "0"}) is None
    assert notify.watchdog_interval({**env, "WATCHDOG_USEC": "soon"}) is None
    assert notify.watchdog_interval({"WATCHDOG_USEC": "30000000"}) is None


def test_vsock_address_is_refused_quietly() -> None:
    assert notify.enabled({"NOTIFY_SOCKET": "vsock:2:1234"}) is False


def test_notify_from_a_child_process(listener: socket.socket) -> None:
    # The real daemon is another process: the datagram must carry its MAINPID.
    code = "from supervisor import notify; import sys; sys.exit(0 if notify.ready() else 1)"
    proc = subprocess.run([sys.executable, "-c", code], check=False, cwd=Path(__file__).parents[2], timeout=20)
    assert proc.returncode == 0
    got = _fields(listener)
    assert got["READY"] == "1"
    assert got["MAINPID"] != str(os.getpid())
