"""Run one real runner process (``python -m runner spec.json``, a cold start) and collect its
events on our own SUB socket, the way the supervisor does: SUB bound on a short ``ipc://`` path,
the runner's XPUB connects and waits for our subscription before its first event.

``hosted=True`` starts it through a stand-in runner host instead, a process of its own that the
spec binds the runner to (``JobSpec.host_pid``), as a Ray runner host does; ``kill_host``
kills that host.

Used by tests/runner and by benchmarks/training.py and benchmarks/inference.py.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import orjson
import psutil
import zmq

from protocol import events as ev
from protocol.codec import build
from protocol.events import is_step
from protocol.jobs import JobConfig, JobSpec
from protocol.tasks import JOB_TASK_TYPES

ROOT = Path(__file__).resolve().parents[2]
FINAL = ("completed", "failed", "cancelled")


#: A stand-in runner host (a Ray host's part in ``python -m runner``'s life): binds the spec to
#: itself (``host_pid``), starts the runner in a session of its own, says its pid, waits.
_HOST = """import os, subprocess, sys
from pathlib import Path
import orjson
spec = Path(sys.argv[1])
spec.write_bytes(orjson.dumps({**orjson.loads(spec.read_bytes()), "host_pid": os.getpid()}))
runner = subprocess.Popen([sys.executable, "-m", "runner", str(spec)], start_new_session=True)
print(runner.pid, flush=True)
runner.wait()
"""


class _HostedProcess:
    """A runner started by a stand-in runner host (``_HOST``), with the ``Popen`` surface the
    harness uses (pid, poll, wait, returncode): its exit is watched through psutil, its exit
    code is not ours to read (-1)."""

    returncode: int | None = None

    def __init__(self, spec_path: Path, env: dict[str, str]) -> None:
        self.host = subprocess.Popen(
            [sys.executable, "-c", _HOST, str(spec_path)], cwd=ROOT, env=env, stdout=subprocess.PIPE
        )
        assert self.host.stdout is not None
        self.pid = int(self.host.stdout.readline())
        self._runner = psutil.Process(self.pid)

    def poll(self) -> int | None:
        return self.returncode if self.returncode is not None or self._exited(0.0) else None

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None and not self._exited(timeout):
            raise subprocess.TimeoutExpired(f"runner {self.pid}", timeout or 0.0)
        return -1

    def _exited(self, timeout: float | None) -> bool:
        try:
            self._runner.wait(timeout)
        except psutil.TimeoutExpired:
            return False
        self.returncode = -1
        return True

    def kill_host(self) -> None:
        """SIGKILL the host (as a node's Ray processes die): the runner is left on its own."""
        self.host.kill()
        self.host.wait(30)


class RunnerProcess:
    """One job in a fresh runner process. Use as a context manager (kills and cleans up)."""

    def __init__(
        self,
        job: str,
        params: dict[str, Any],
        task_dir: Path,
        *,
        config: dict[str, Any] | None = None,
        torch_threads: int = 2,
        dataloader_workers: int = 0,
        batch_cap: int | None = None,
        device: str = "cpu",
        hosted: bool = False,
        host_pid: int = 0,
        grace_seconds: float = 10.0,
    ) -> None:
        self.task_id = f"t-{uuid.uuid4().hex[:10]}"
        self.task_dir = task_dir
        task_dir.mkdir(parents=True, exist_ok=True)
        self._ipc_dir = tempfile.mkdtemp(prefix="rf", dir="/tmp")
        endpoint = f"ipc://{self._ipc_dir}/ev.sock"
        self._zctx = zmq.Context()
        self._sub = self._zctx.socket(zmq.SUB)
        self._sub.setsockopt(zmq.LINGER, 0)
        self._sub.setsockopt(zmq.SUBSCRIBE, b"")
        self._sub.bind(endpoint)
        self.spec = JobSpec(
            task_id=self.task_id,
            task_type=JOB_TASK_TYPES[job],
            job=job,
            params=params,
            device=device,
            host_device=device,
            task_dir=str(task_dir),
            events_endpoint=endpoint,
            torch_threads=torch_threads,
            interop_threads=1,
            opencv_threads=1,
            dataloader_workers=dataloader_workers,
            batch_cap=batch_cap,
            # Given settings over the defaults, checked as the runner checks a spec.
            config=build(JobConfig, config or {}, where="config"),
            host_pid=host_pid,
            grace_seconds=grace_seconds,
        )
        spec_path = task_dir / "spec.json"
        spec_path.write_bytes(self.spec.dump())
        self.proc: subprocess.Popen[bytes] | _HostedProcess
        env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1")
        if hosted:  # (``host_pid`` then is the host's)
            self.proc = _HostedProcess(spec_path, env)
        else:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "runner", str(spec_path)],
                cwd=ROOT,
                env=env,
                start_new_session=True,
            )
        self.events: list[dict[str, Any]] = []
        self._pending: list[dict[str, Any]] = []
        self.final: dict[str, Any] | None = None

    def next_event(self, timeout: float) -> dict[str, Any] | None:
        """The next event, or None when nothing arrives within ``timeout`` seconds.

        A message is ``[task_id, events]``, packed (the publisher batches at high rates)."""
        if not self._pending:
            if not self._sub.poll(int(timeout * 1000)):
                return None
            topic, *payloads = ev.unpack(self._sub.recv_multipart())
            assert topic.decode() == self.task_id
            self._pending.extend(orjson.loads(p) for p in payloads)
        event: dict[str, Any] = self._pending.pop(0)
        self.events.append(event)
        if event["kind"] == "status" and event.get("status") in FINAL:
            self.final = event
        return event

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
        """Collect events until one matches ``predicate``; fail on the deadline or on the end."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no matching event within {timeout} s; last: {self.events[-3:]}")
            event = self.next_event(min(remaining, 1.0))
            if event is None:
                if self.proc.poll() is not None and self.final is None:
                    self._drain()
                    if self.final is None:
                        raise AssertionError(
                            f"runner exited ({self.proc.returncode}) without a final event: {self.log_tail()}"
                        )
                continue
            if predicate(event):
                return event
            if self.final is not None:
                raise AssertionError(f"job ended before the awaited event: {self.final['message']}\n{self.log_tail()}")

    def _drain(self) -> None:
        while self.final is None and self.next_event(0.5) is not None:
            pass

    def finish(self, timeout: float) -> dict[str, Any]:
        """Wait for the final status event and the process exit; returns the final event."""
        if self.final is None:
            self.wait_for(lambda e: e["kind"] == "status" and e.get("status") in FINAL, timeout)
        assert self.final is not None
        self.proc.wait(timeout=30)
        return self.final

    def kill_host(self) -> int:
        """SIGKILL the stand-in runner host (``hosted=True``), as a node's Ray processes die;
        returns its pid."""
        assert isinstance(self.proc, _HostedProcess)
        self.proc.kill_host()
        return self.proc.host.pid

    def terminate(self) -> None:
        """SIGTERM to the runner's process group, as the supervisor's cancel does."""
        os.killpg(self.proc.pid, signal.SIGTERM)

    def log_tail(self, n: int = 6) -> str:
        return "\n".join(e["message"][-2000:] for e in self.events[-n:])

    def stage(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("stage") == name]

    def steps(self) -> list[dict[str, Any]]:
        """The training steps (stage ``training`` with a ``step``; not the epochs' summaries)."""
        return [e for e in self.events if is_step(e)]

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                try:  # a warm runner that has not called setsid yet
                    os.kill(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.proc.wait(timeout=30)
        if isinstance(self.proc, _HostedProcess):
            self.proc.kill_host()
        self._sub.close(linger=0)
        self._zctx.term()
        shutil.rmtree(self._ipc_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_job(job: str, params: dict[str, Any], task_dir: Path, timeout: float = 240, **kw: Any) -> RunnerProcess:
    """Run a job to its end; returns the finished ``RunnerProcess`` (events, final)."""
    with RunnerProcess(job, params, task_dir, **kw) as rp:
        rp.finish(timeout)
    return rp
