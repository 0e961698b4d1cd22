"""The demo's service: ``rfuavd all`` (``python -m supervisor all``) in a session of its own, on
a free loopback port and a short runtime directory under /tmp, with the demo's home and no
settings of the caller's (no ``RFUAV_*`` variable, no ``.env``)."""

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
import psutil  # type: ignore[import-untyped]

REPO = Path(__file__).resolve().parents[2]


class ServiceError(RuntimeError):
    """The service did not start, or did not stop cleanly."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Service:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = home / "service.log"
        self.runtime = Path(tempfile.mkdtemp(prefix="rfdemo", dir="/tmp"))  # AF_UNIX paths stay short
        env = {k: v for k, v in os.environ.items() if not k.startswith("RFUAV_")}
        for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            env.pop(name, None)
        self.env = {
            **env, "RFUAV_HOME": str(home), "RFUAV_RUNTIME_DIR": str(self.runtime),
            "RFUAV_ENV_FILE": "/nonexistent", "RFUAV_HOST": "127.0.0.1", "RFUAV_PORT": str(self.port),
            "NO_ALBUMENTATIONS_UPDATE": "1",
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
        }  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120.0) -> None:
        """Start it and return once ``/api/v1/health`` answers 200 (web and supervisor up)."""
        with open(self.log_path, "ab") as log:
            # A session of its own: a Ctrl-C reaches the demo only, which then stops the service.
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "supervisor", "all"], cwd=str(REPO), env=self.env,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                r = httpx.get(self.base_url + "/api/v1/health", timeout=2.0)
                if r.status_code == 200:
                    return
                last = f"HTTP {r.status_code}"
            except httpx.TransportError as exc:
                last = str(exc) or type(exc).__name__
            try:
                code = self.proc.wait(0.2)  # the poll interval; a crash ends the wait at once
            except subprocess.TimeoutExpired:
                continue
            raise ServiceError(f"rfuavd all exited with status {code} while starting")
        raise ServiceError(f"not healthy within {timeout:.0f} s ({last})")

    def stop(self, timeout: float = 60.0) -> str:
        """SIGTERM (it cancels running jobs, then exits), wait; SIGKILL the tree if it hangs or
        on a second Ctrl-C. Raises ``ServiceError`` unless it exited 0 leaving no process."""
        try:
            if self.proc is None:
                return "never started"
            if self.proc.poll() is not None:
                raise ServiceError(f"rfuavd all had already exited with status {self.proc.returncode}")
            tree = [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(recursive=True)]
            started = time.monotonic()
            self.proc.send_signal(signal.SIGTERM)
            try:
                code = self.proc.wait(timeout)
            except (subprocess.TimeoutExpired, KeyboardInterrupt):
                self.kill()
                raise ServiceError("no clean stop (timed out or interrupted): killed") from None
            left = sorted({p.pid for p in tree if _alive(p)} | set(self.processes()))
            if code != 0 or left:
                raise ServiceError(f"exit status {code}, processes left: {left}")
            return f"exit 0 in {time.monotonic() - started:.1f} s, no process left"
        finally:
            shutil.rmtree(self.runtime, ignore_errors=True)

    def processes(self) -> list[int]:
        """Live processes of this service, wherever they were reparented: those with its
        runtime directory in their environment (every process of it inherits the variable)."""
        pids = []
        for proc in psutil.process_iter():
            try:
                if proc.environ().get("RFUAV_RUNTIME_DIR") == str(self.runtime) and _alive(proc):
                    pids.append(proc.pid)
            except psutil.Error:
                continue
        return pids

    def kill(self) -> None:
        """SIGKILL ``rfuavd all`` and every process below it (ours, by pid)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        top = psutil.Process(self.proc.pid)
        for proc in [*top.children(recursive=True), *map(psutil.Process, self.processes()), top]:
            try:
                proc.kill()
            except psutil.Error:
                pass
        self.proc.wait()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _alive(proc: psutil.Process) -> bool:
    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False
