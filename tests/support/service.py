"""The whole service for HTTP tests: a real supervisor and a real uvicorn web server.

Usage::

    from tests.support.service import Service

    with Service(env={"RFUAV_API_TOKEN": "s3cret"}) as svc:
        task = svc.client.start_diagnostic(events=10)          # RFUAVClient (token preset)
        svc.client.wait_for(task["task_id"], timeout=60)
        r = httpx.get(svc.base_url + "/api/v1/health")         # or any HTTP client

or the pytest fixture ``service`` of ``tests/web/conftest.py`` (one service per test; copy it
into your own conftest to use it elsewhere).

What it does:

- ``start()`` starts ``tests.support.supervisor.SupervisorProcess`` (temp ``RFUAV_HOME``, short
  runtime dir under /tmp, cold start mode unless ``env`` says otherwise), then the web server as
  a subprocess (``python -m web``) on a free loopback port with the same environment,
  and returns once ``GET /api/v1/health`` answers 200 (so both are up and connected).
- Attributes: ``base_url``, ``home`` (the RFUAV_HOME; the default data root), ``env`` (the full
  environment both processes got), ``settings``, ``client`` (an ``RFUAVClient`` with the token
  of ``env`` if any), ``supervisor`` (the ``SupervisorProcess``: ``call``, ``logs``, ``kill``,
  ``restart``…), ``web_pid``. ``cwd``: both processes' working directory (default the repository;
  with ``env={"RFUAV_ENV_FILE": ""}`` a ``.env`` there configures them).
- ``stop_supervisor(sig)`` / ``start_supervisor()`` / ``restart_supervisor()`` act on the
  supervisor only; web keeps running and reconnects by itself.
- ``web_log_text()`` / ``supervisor.log_text()``: the two logs (print them when a test fails).
- ``close()`` stops web (SIGTERM, bounded wait, SIGKILL), then the supervisor, and removes the
  temp dirs.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Self

import httpx

from protocol.settings import Settings
from tests.support.supervisor import SupervisorProcess
from web.client import RFUAVClient


class ServiceError(RuntimeError):
    """The web server did not start or stop as expected (its log is in the message)."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Service:
    """A supervisor and a web server on loopback (see the module docstring)."""

    def __init__(
        self,
        env: dict[str, str] | None = None,
        home: Path | None = None,
        start_timeout: float = 60.0,
        cwd: Path | None = None,
    ) -> None:
        extra = {"RFUAV_START_MODE": "cold", **(env or {})}
        self.port = free_port()
        extra.setdefault("RFUAV_HOST", "127.0.0.1")
        # ``TEST_WEB_WORKERS=2 pytest tests/web``: the web layer's tests against several workers.
        extra.setdefault("RFUAV_WEB_WORKERS", os.environ.get("TEST_WEB_WORKERS", "1"))
        extra["RFUAV_PORT"] = str(self.port)
        self.supervisor = SupervisorProcess(home=home, env=extra, start_timeout=start_timeout, cwd=cwd)
        self.env: dict[str, str] = self.supervisor.env
        self.home: Path = self.supervisor.home
        self.settings: Settings = self.supervisor.settings
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.start_timeout = start_timeout
        self.web: subprocess.Popen[bytes] | None = None
        self.web_log = self.home / "web.log"
        self.client = RFUAVClient(self.base_url, token=self.env.get("RFUAV_API_TOKEN") or None, timeout=30.0)

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> Self:
        self.supervisor.start()
        try:
            self.start_web()
        except BaseException:
            self.supervisor.close()
            raise
        return self

    def start_web(self) -> None:
        with open(self.web_log, "ab") as log:  # the child keeps its own descriptor
            self.web = subprocess.Popen(
                [sys.executable, "-m", "web"],
                cwd=str(self.supervisor.cwd),
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.wait_healthy(self.start_timeout)

    def wait_healthy(self, timeout: float) -> dict[str, Any]:
        """Poll /api/v1/health until it answers 200 (web up and the supervisor connected)."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        with httpx.Client(timeout=2.0) as http:
            while True:
                if self.web is not None and self.web.poll() is not None:
                    raise ServiceError(f"web exited with {self.web.returncode}:\n{self.web_log_text()}")
                try:
                    r = http.get(self.base_url + "/api/v1/health")
                    if r.status_code == 200:
                        data: dict[str, Any] = r.json()["data"]
                        return data
                    last = f"{r.status_code} {r.text[:200]}"
                except httpx.TransportError as exc:
                    last = str(exc)
                if time.monotonic() > deadline:
                    raise ServiceError(f"web not healthy within {timeout} s ({last}):\n{self.web_log_text()}")
                # Between two polls, wait on the web process itself: a crash ends the wait at once.
                if self.web is not None:
                    try:
                        self.web.wait(0.05)
                    except subprocess.TimeoutExpired:
                        pass

    @property
    def web_pid(self) -> int:
        assert self.web is not None
        return self.web.pid

    def stop_web(self, timeout: float = 30.0) -> int | None:
        if self.web is None or self.web.poll() is not None:
            return None if self.web is None else self.web.returncode
        self.web.send_signal(signal.SIGTERM)
        try:
            return self.web.wait(timeout)
        except subprocess.TimeoutExpired:
            self.web.kill()
            self.web.wait()
            raise ServiceError(f"web did not stop within {timeout} s of SIGTERM:\n{self.web_log_text()}") from None

    def stop_supervisor(self, sig: int = signal.SIGKILL) -> int:
        return self.supervisor.kill(sig)

    def start_supervisor(self) -> None:
        self.supervisor.start()

    def restart_supervisor(self) -> None:
        self.supervisor.restart()

    def close(self) -> None:
        self.client.close()
        try:
            self.stop_web()
        finally:
            self.supervisor.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def web_log_text(self) -> str:
        try:
            return self.web_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def url(self, path: str) -> str:
        return self.base_url + path

    def headers(self) -> dict[str, str]:
        token = self.env.get("RFUAV_API_TOKEN")
        return {"Authorization": f"Bearer {token}"} if token else {}


__all__ = ["Service", "ServiceError", "free_port"]
