"""Serving replicas in tests: ``ReplicaProcess`` starts one real replica process (``python -m
runner spec.json``, a cold start in its own session, ``protocol.serving.ReplicaParams`` on a
short ``ipc://`` path under /tmp), ``Client`` speaks its wire from a DEALER
(``[request_id, op, content_type, body]`` out, ``[request_id, status, body]`` back).
"""

from __future__ import annotations

import dataclasses
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

import orjson
import zmq

from protocol import serving as sv
from protocol.jobs import JobConfig, JobSpec

ROOT = Path(__file__).resolve().parents[2]


class Client:
    """A DEALER speaking the replica wire: ``[request_id, op, content_type, body]`` out,
    ``[request_id, status, body]`` back."""

    def __init__(self, address: str) -> None:
        self._ctx = zmq.Context()
        self.sock = self._ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(address)
        self.replies: dict[bytes, tuple[int, Any, float]] = {}

    def send_frames(self, frames: list[bytes]) -> None:
        self.sock.send_multipart(frames)

    def send(self, op: bytes, body: bytes = b"", content_type: bytes = b"application/json") -> bytes:
        rid = uuid.uuid4().hex.encode()
        self.send_frames([rid, op, content_type, body])
        return rid

    def wait(self, rid: bytes, timeout: float = 30.0) -> tuple[int, Any]:
        """The reply to ``rid`` (replies to others are kept for their own ``wait``)."""
        deadline = time.monotonic() + timeout
        while rid not in self.replies:
            left = deadline - time.monotonic()
            if left <= 0 or not self.sock.poll(int(left * 1000) + 1):
                raise AssertionError(f"no reply to {rid!r} within {timeout} s")
            got, code, body = self.sock.recv_multipart()
            self.replies[got] = (int(code), orjson.loads(body), time.monotonic())
        status, answer, _ = self.replies.pop(rid)
        return status, answer

    def call(self, op: bytes, body: bytes = b"", content_type: bytes = b"application/json") -> tuple[int, Any]:
        return self.wait(self.send(op, body, content_type))

    def status(self) -> dict[str, Any]:
        code, answer = self.call(sv.OP_STATUS, b"", b"")
        assert code == 200, answer
        assert isinstance(answer, dict)
        return answer

    def close(self) -> None:
        self.sock.close(linger=0)
        self._ctx.term()


class ReplicaProcess:
    """One replica process (cold start, its own session) and a client."""

    def __init__(
        self,
        root: Path,
        cfg: Path,
        weights: Path,
        data_roots: list[Path],
        *,
        name: str = "uav",
        version: int = 3,
        torch_threads: int = 1,
        stale_socket: bool = False,
        **params: Any,
    ) -> None:
        """A replica of ``cfg``/``weights`` (task directory ``root/task``); ``params``: the other
        ``ReplicaParams`` fields (``max_batch_size``, ...). ``stale_socket``: a dead process's
        socket file is left where it binds."""
        self.ipc_dir = tempfile.mkdtemp(prefix="r", dir="/tmp")  # AF_UNIX paths are short
        self.address = f"ipc://{self.ipc_dir}/r.sock"
        if stale_socket:
            with socket.socket(socket.AF_UNIX) as stale:
                stale.bind(self.address.removeprefix("ipc://"))
        self.task_dir = root / "task"
        self.task_dir.mkdir(parents=True)
        self.weights = weights
        rp = sv.ReplicaParams(name=name, version=version, address=self.address, cfg_path=str(cfg), weight_path=str(weights),
                              **params)  # fmt: skip
        spec = JobSpec(
            task_id=f"s-{uuid.uuid4().hex[:8]}", task_type=sv.TASK_TYPE, job=sv.JOB, params=dataclasses.asdict(rp),
            device="cpu", host_device="cpu", task_dir=str(self.task_dir), events_endpoint="ipc:///nonexistent",
            torch_threads=torch_threads, config=JobConfig(data_roots=tuple(str(r) for r in data_roots)),
        )  # fmt: skip
        spec_path = self.task_dir / "spec.json"
        spec_path.write_bytes(spec.dump())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "runner", str(spec_path)],
            cwd=ROOT,
            env=dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1"),
            start_new_session=True,
        )
        self.client = Client(self.address)
        self._ready: dict[str, Any] | None = None

    def ready(self, timeout: float = 90.0) -> dict[str, Any]:
        """The first ``status`` answer (sent once: the DEALER queues it until the bind)."""
        if self._ready is None:
            rid = self.client.send(sv.OP_STATUS, b"", b"")
            deadline = time.monotonic() + timeout
            while True:
                try:
                    code, answer = self.client.wait(rid, 0.25)
                    break
                except AssertionError:
                    if self.proc.poll() is not None:
                        raise AssertionError(
                            f"replica exited {self.proc.returncode}: {self.stderr()[-3000:]}"
                        ) from None
                    if time.monotonic() > deadline:
                        raise
            assert code == 200, answer
            self._ready = answer
        return self._ready

    def stderr(self) -> str:
        path = self.task_dir / "stderr.log"
        return path.read_text() if path.exists() else ""

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.client.close()
        shutil.rmtree(self.ipc_dir, ignore_errors=True)
