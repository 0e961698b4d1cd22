"""The whole service for the GPU check: ``python -m supervisor all`` on a temp home under /tmp
and a free loopback port, the way ``rfuavd all`` runs in production (warm start mode)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]

from gpucheck.host import CheckFailed

REPO = Path(__file__).resolve().parents[2]


def _alive(proc: Any) -> bool:
    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Service:
    """``python -m supervisor all`` on a temp home and a free loopback port."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.runtime = Path(tempfile.mkdtemp(prefix="rf", dir="/tmp"))  # AF_UNIX paths stay short
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        keep = {k: v for k, v in os.environ.items() if not k.startswith("RFUAV_")}
        keep.pop("NOTIFY_SOCKET", None)
        keep.pop("WATCHDOG_USEC", None)
        self.env = {
            **keep,
            "RFUAV_HOME": str(home), "RFUAV_RUNTIME_DIR": str(self.runtime), "RFUAV_ENV_FILE": "/nonexistent",
            "RFUAV_HOST": "127.0.0.1", "RFUAV_PORT": str(self.port), "RFUAV_DIAGNOSTIC": "1",
            "RFUAV_URL_ALLOW_LOOPBACK": "1", "RFUAV_GRACE_SECONDS": "5", "NO_ALBUMENTATIONS_UPDATE": "1",
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
        }  # fmt: skip
        self.log_path = home / "service.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120.0) -> None:
        import httpx

        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "supervisor", "all"], cwd=str(REPO), env=self.env,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise CheckFailed(f"rfuavd all exited with {self.proc.returncode} while starting")
            try:
                r = httpx.get(self.base_url + "/api/v1/health", timeout=2.0)
                if r.status_code == 200:
                    return
                last = f"{r.status_code} {r.text[:200]}"
            except httpx.TransportError as exc:
                last = str(exc)
            try:
                self.proc.wait(0.2)  # a crash ends the wait at once
            except subprocess.TimeoutExpired:
                pass
        raise CheckFailed(f"not healthy within {timeout:.0f} s ({last})")

    def stop(self, timeout: float = 90.0) -> str:
        """SIGTERM (web, then the supervisor, which cancels jobs); SIGKILL the tree if it hangs."""
        if self.proc is None:
            return "never started"
        if self.proc.poll() is not None:
            raise CheckFailed(f"rfuavd all had already exited with {self.proc.returncode}")
        tree = psutil.Process(self.proc.pid).children(recursive=True)
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill_tree()
            raise CheckFailed(f"still running {timeout:.0f} s after SIGTERM: killed") from None
        finally:
            shutil.rmtree(self.runtime, ignore_errors=True)
        left = [p.pid for p in tree if _alive(p)]
        if code != 0 or left:
            raise CheckFailed(f"exit status {code}, processes left: {left}")
        return f"SIGTERM -> exit 0 in {time.monotonic() - started:.1f} s, no process left"

    def kill_tree(self) -> None:
        """SIGKILL ``rfuavd all`` and every process below it (only ours, by pid)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        top = psutil.Process(self.proc.pid)
        for proc in [top, *top.children(recursive=True)]:
            try:
                proc.kill()
            except psutil.Error:
                pass
        self.proc.wait()
        shutil.rmtree(self.runtime, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def control(self, kind: str, **fields: Any) -> dict[str, Any]:
        """One command on the supervisor's control socket (what web sends); the reply's data."""
        import orjson
        import zmq

        from protocol.codec import PROTOCOL_VERSION
        from protocol.replies import CommandError, parse_reply
        from protocol.settings import Settings

        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.connect(Settings.from_env(self.env).addresses.control)
            request_id = uuid.uuid4().hex
            sock.send(orjson.dumps({"v": PROTOCOL_VERSION, "id": request_id, "kind": kind, **fields}))
            deadline = time.monotonic() + 30.0
            while (remaining := deadline - time.monotonic()) > 0 and sock.poll(int(remaining * 1000)):
                rid, data = parse_reply(sock.recv())
                if rid != request_id:
                    continue
                if isinstance(data, CommandError):
                    raise CheckFailed(f"control {kind}: {data}")
                return data
            raise CheckFailed(f"control {kind}: no reply within 30 s")
        finally:
            sock.close(linger=0)
            ctx.term()
