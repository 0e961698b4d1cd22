"""Test support for the spawner: a real SUB socket standing in for the supervisor's events-in,
job specs for the diagnostic job, and process-tree checks.

The sink binds an ``ipc://`` SUB in a short temp dir and subscribes to everything; each runner's
XPUB waits for that subscription before its first event, so nothing is lost to slow joining.
"""

from __future__ import annotations

import asyncio
import os
import select
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import psutil
import zmq
import zmq.asyncio

from protocol import events as ev
from protocol.jobs import JobSpec
from protocol.settings import Settings


class EventSink:
    """A bound SUB socket receiving ``[task_id, events]`` messages (packed) from runners."""

    def __init__(self, directory: Path) -> None:
        self.ctx = zmq.asyncio.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.endpoint = f"ipc://{directory / 'ev.sock'}"
        self.sock.bind(self.endpoint)
        self.events: dict[str, list[dict[str, Any]]] = {}

        self._queue: list[dict[str, Any]] = []

    async def next(self, timeout: float = 30.0) -> dict[str, Any]:
        """The next event from any runner; ``asyncio.TimeoutError`` when none arrives in time."""
        if not self._queue:
            topic, *payloads = ev.unpack(await asyncio.wait_for(self.sock.recv_multipart(), timeout))
            for payload in payloads:
                event: dict[str, Any] = orjson.loads(payload)
                assert event["task_id"] == topic.decode()
                self.events.setdefault(event["task_id"], []).append(event)
                self._queue.append(event)
        return self._queue.pop(0)

    async def until(
        self, task_id: str, predicate: Callable[[dict[str, Any]], bool], timeout: float = 60.0
    ) -> dict[str, Any]:
        """Receive until an event of ``task_id`` satisfies ``predicate``; return that event."""
        for event in self.events.get(task_id, []):
            if predicate(event):
                return event
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise TimeoutError(f"no matching event for {task_id} in {timeout} s")
            event = await self.next(left)
            if event["task_id"] == task_id and predicate(event):
                return event

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


def short_dir(prefix: str = "rf") -> Path:
    """A short directory under /tmp (AF_UNIX paths must stay under 107 bytes)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def remove_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def settings_for(home: Path, start_mode: str) -> Settings:
    return Settings(home=home, runtime_dir=home / "run", start_mode=start_mode)


def new_task_id(prefix: str = "t") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def diagnostic_spec(
    home: Path,
    endpoint: str,
    params: dict[str, Any] | None = None,
    task_id: str | None = None,
    **fields: Any,
) -> JobSpec:
    """A diagnostic job's spec with its task dir under ``home/tasks``."""
    task_id = task_id or new_task_id()
    task_dir = home / "tasks" / task_id
    task_dir.mkdir(parents=True, exist_ok=True)
    return JobSpec(
        task_id=task_id,
        task_type="diagnostic",
        job="diagnostic",
        params=params or {},
        device="cpu",
        host_device="cpu",
        task_dir=str(task_dir),
        events_endpoint=endpoint,
        **fields,
    )


def environ_of(pid: int) -> dict[str, str]:
    """The environment a process has now (``/proc/<pid>/environ`` reflects ``putenv``)."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    out = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            out[key.decode()] = value.decode(errors="replace")
    return out


def live(pids: list[int]) -> list[int]:
    """Those of ``pids`` that are still running (zombies count as gone)."""
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.Error:
            continue
    return out


def wait_gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    """Wait until each of ``pids`` has exited (a pidfd turns readable on exit, so a zombie
    awaiting its reaper counts as gone); return those still running after ``timeout``."""
    fds = {}
    for pid in pids:
        try:
            fds[os.pidfd_open(pid)] = pid
        except ProcessLookupError:
            continue
    try:
        deadline = time.monotonic() + timeout
        pending = set(fds)
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            readable, _, _ = select.select(list(pending), [], [], left)
            pending -= set(readable)
        return sorted(fds[fd] for fd in pending)
    finally:
        for fd in fds:
            os.close(fd)
