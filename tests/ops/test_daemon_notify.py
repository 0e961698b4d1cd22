"""End to end: the real daemon speaks sd_notify to a socket standing in for systemd."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.supervisor import REPO, SupervisorProcess

pytestmark = pytest.mark.timeout(120)


class FakeSystemd:
    """A bound AF_UNIX datagram socket: what systemd listens on for ``Type=notify`` units."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.seen: list[dict[str, str]] = []

    def next(self, timeout: float) -> dict[str, str]:
        self.sock.settimeout(timeout)
        data = self.sock.recv(4096).decode()
        msg = dict(line.split("=", 1) for line in data.split("\n") if line)
        self.seen.append(msg)
        return msg

    def wait_for(self, key: str, timeout: float = 20.0, value: str | None = None) -> dict[str, str]:
        """The next datagram carrying ``key`` (with ``value`` when given); others are kept in ``seen``."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {key}= datagram within {timeout} s; saw {self.seen}")
            try:
                msg = self.next(remaining)
            except TimeoutError:
                continue
            if key in msg and (value is None or value in msg[key]):
                return msg

    def close(self) -> None:
        self.sock.close()


@pytest.fixture()
def systemd(short_tmp: Path) -> Iterator[FakeSystemd]:
    fake = FakeSystemd(short_tmp / "notify.sock")
    yield fake
    fake.close()


def test_ready_status_watchdog_and_stopping(systemd: FakeSystemd) -> None:
    sup = SupervisorProcess(
        env={
            "NOTIFY_SOCKET": str(systemd.path),
            # 2 s watchdog: the daemon must ping every second.
            "WATCHDOG_USEC": "2000000",
            "RFUAV_START_MODE": "cold",
        }
    )
    try:
        sup.start()  # returns once `health` answers
        ready = systemd.wait_for("READY")
        assert ready["READY"] == "1"
        assert ready["MAINPID"] == str(sup.pid)
        assert ready["STATUS"] == "0 running, 0 queued"

        # Watchdog pings keep coming while the daemon is idle (two in a row prove a loop).
        systemd.wait_for("WATCHDOG", timeout=5)
        systemd.wait_for("WATCHDOG", timeout=5)

        task_id = sup.submit("diagnostic", params={"sleep": 60})
        running = systemd.wait_for("STATUS", value="1 running")
        assert running["STATUS"] == "1 running, 0 queued"
        sup.wait_task(task_id, lambda t: t["status"] == "running", timeout=30)

        code = sup.kill(signal.SIGTERM)
        stopping = systemd.wait_for("STOPPING")
        assert stopping["STOPPING"] == "1"
        assert code == 0, sup.log_text()
        # Shutdown cancelled the job and recorded it; STOPPING came before the daemon exited.
        assert sup.returncode == 0
    finally:
        sup.close()
    # The runner never inherited the daemon's notify socket: every datagram is the daemon's.
    assert all(m.get("MAINPID", str(sup.pid)) == str(sup.pid) for m in systemd.seen)


def test_no_usable_notify_socket_means_no_datagrams(systemd: FakeSystemd) -> None:
    """Outside systemd the daemon runs the same and sends nothing. systemd hands over an absolute
    path (or an @abstract name); here NOTIFY_SOCKET names the fake socket by a path relative to the
    daemon's working directory: a daemon that sent to whatever the variable says would reach it,
    so the silence below is the daemon's doing."""
    relative = os.path.relpath(systemd.path, REPO)
    assert not relative.startswith("/") and (REPO / relative).resolve() == systemd.path.resolve()
    env = {"NOTIFY_SOCKET": relative, "WATCHDOG_USEC": "200000", "RFUAV_START_MODE": "cold"}
    with SupervisorProcess(env=env) as sup:
        assert sup.env["NOTIFY_SOCKET"] == relative
        task_id = sup.submit("diagnostic", params={"events": 2})
        sup.wait_final(task_id)
        assert sup.call("health")["running"] == 0
        log = sup.log_text()
    assert "is not an AF_UNIX address; notifications disabled" in log
    # The daemon ran a task and shut down: every READY/STATUS/WATCHDOG/STOPPING it could have
    # sent would be queued on the socket by now.
    with pytest.raises(TimeoutError):
        systemd.next(timeout=0.5)
