"""A real supervisor daemon for tests: a subprocess, real sockets, a real SQLite file.

Usage (plain)::

    from tests.support.supervisor import SupervisorProcess

    with SupervisorProcess(env={"RFUAV_START_MODE": "cold"}) as sup:
        data = sup.call("submit", tasks=[{"task_type": "diagnostic", "job": "diagnostic",
                                          "params": {"events": 10}}])
        task_id = data["tasks"][0]["task_id"]
        task = sup.wait_task(task_id, lambda t: t["status"] == "completed", timeout=30)
        events = sup.logs(task_id)            # every stored event, in seq order

Or through the pytest fixture ``supervisor`` of ``tests/supervisor/conftest.py`` (cold start,
fresh home per test); copy that fixture into your own conftest to use it elsewhere.

What it does:

- ``start()`` runs ``python -m supervisor supervisor`` (``command="all"``: ``rfuavd all``) with a fresh temp ``RFUAV_HOME`` (or the
  one given), a short ``RFUAV_RUNTIME_DIR`` under /tmp (AF_UNIX paths are limited to 107 bytes)
  and ``env`` overrides, and returns once a real DEALER got an answer to ``health``.
  stdout/stderr go to ``<home>/supervisor.log`` (``log_text()`` reads it: print it when a
  test fails).
- ``call(kind, **fields) -> data`` sends one control command and returns the reply's ``data``;
  an error reply raises ``protocol.replies.CommandError`` (``.code``, ``.message``).
  ``request(raw_bytes) -> reply dict`` sends arbitrary bytes (for bad-input tests).
- ``wait_task(task_id, predicate, timeout)`` asks ``get`` until ``predicate(task)`` holds.
  ``wait_final(task_id, timeout)`` waits for completed/failed/cancelled.
- ``logs(task_id)`` returns every stored event (paging ``logs`` as needed).
- ``stored_tasks()`` reads every task row from the SQLite file (also with the daemon down).
- ``subscribe(topic=b"")`` returns an ``EventSubscriber`` on events-out, returned only once the
  supervisor has counted its subscription (so nothing published after it is missed);
  ``sub.recv(timeout)`` gives ``(task_id, event_dict)``.
- ``kill(sig)`` signals the daemon and waits for it to exit (``returncode``);
  ``restart()`` starts it again on the same home and runtime dir; ``stop()`` sends SIGTERM
  (running jobs are cancelled with the grace period) and waits.
"""

from __future__ import annotations

import collections
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
from typing import Any

import orjson
import zmq

from protocol import events as ev
from protocol.codec import PROTOCOL_VERSION
from protocol.replies import CommandError, parse_reply
from protocol.settings import Settings
from protocol.tasks import FINAL_STATUSES

REPO = Path(__file__).resolve().parents[2]


class SupervisorError(RuntimeError):
    """The daemon did not start, answer or stop as expected (its log is in the message)."""


class EventSubscriber:
    """A SUB socket on the supervisor's events-out."""

    def __init__(self, ctx: zmq.Context[Any], endpoint: str, topic: bytes, monitor: bool = False) -> None:
        self.sock = ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, 0)  # unbounded: a test reads in bursts
        self.sock.setsockopt(zmq.SUBSCRIBE, topic)
        #: With ``monitor``: a PAIR socket reporting the connection's events (``wait_connected``).
        self.monitor = self.sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED) if monitor else None
        self.sock.connect(endpoint)
        self._pending: collections.deque[tuple[str, dict[str, Any]]] = collections.deque()
        #: Topics that are not task ids (task records, routes) start with a NUL: skipped unless
        #: asked for by name.
        self._other_topics = topic.startswith(b"\x00")

    def recv(self, timeout: float = 10.0) -> tuple[str, dict[str, Any]]:
        """The next ``(task_id, event)``; raises ``TimeoutError`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not self._pending:
            if not self.sock.poll(int(max(0.0, deadline - time.monotonic()) * 1000)):
                raise TimeoutError(f"no event within {timeout} s")
            # [task_id, events, ...], packed (protocol.events)
            topic, *payloads = ev.unpack(self.sock.recv_multipart())
            if topic.startswith(b"\x00") and not self._other_topics:
                continue
            self._pending.extend((topic.decode(), orjson.loads(data)) for data in payloads)
        return self._pending.popleft()

    def until_final(self, task_id: str, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Events of ``task_id`` up to and including its final status event."""
        deadline = time.monotonic() + timeout
        out: list[dict[str, Any]] = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"task {task_id}: no final status event within {timeout} s ({len(out)} events)")
            tid, event = self.recv(remaining)
            if tid != task_id:
                continue
            out.append(event)
            if event.get("kind") == "status" and event.get("status") in FINAL_STATUSES:
                return out

    def wait_connected(self, timeout: float) -> None:
        """Wait until the connection's handshake is done (a monitored subscriber only): the
        subscription is on its way to the supervisor then."""
        assert self.monitor is not None
        if not self.monitor.poll(int(timeout * 1000)):
            raise TimeoutError(f"no connection to events-out within {timeout} s")
        self.monitor.recv_multipart()  # the only event asked for: EVENT_HANDSHAKE_SUCCEEDED
        self.sock.disable_monitor()
        self.monitor.close(linger=0)
        self.monitor = None

    def close(self) -> None:
        if self.monitor is not None:
            self.monitor.close(linger=0)
        self.sock.close(linger=0)


class SupervisorProcess:
    """A supervisor daemon subprocess for one test (see the module docstring)."""

    def __init__(
        self,
        home: Path | None = None,
        env: dict[str, str] | None = None,
        start_timeout: float = 60.0,
        command: str = "supervisor",
        cwd: Path | None = None,
    ) -> None:
        self.command = command  # "supervisor", or "all" (supervisor and web as children)
        #: The daemon's working directory (a ``./.env`` there is read when ``RFUAV_ENV_FILE`` is "").
        self.cwd = cwd or REPO
        self._own_home = home is None
        self.home = Path(home) if home is not None else Path(tempfile.mkdtemp(prefix="rfuav-home-"))
        self.runtime_dir = Path(tempfile.mkdtemp(prefix="rf", dir="/tmp"))
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("RFUAV_") and k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")
        }
        self.env.update(
            {
                "RFUAV_HOME": str(self.home),
                "RFUAV_RUNTIME_DIR": str(self.runtime_dir),
                "RFUAV_ENV_FILE": "/nonexistent",
                "RFUAV_GRACE_SECONDS": "5",
                # The tests and benchmarks drive the diagnostic job (off by default).
                "RFUAV_DIAGNOSTIC": "1",
                "NO_ALBUMENTATIONS_UPDATE": "1",
                "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            }
        )
        self.env.update(env or {})
        self.start_timeout = start_timeout
        self.settings = Settings.from_env(self.env)
        self.proc: subprocess.Popen[bytes] | None = None
        self._ctx: zmq.Context[Any] = zmq.Context()
        self._dealer: zmq.Socket[bytes] | None = None
        self._subs: list[EventSubscriber] = []
        self.log_path = self.home / "supervisor.log"

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> SupervisorProcess:
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "supervisor", self.command],
                cwd=str(self.cwd),
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.proc.poll() is not None:
                raise SupervisorError(f"supervisor exited with {self.proc.returncode} before ready:\n{self.log_text()}")
            try:
                self.call("health", timeout=min(2.0, max(0.1, deadline - time.monotonic())))
                return self
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise SupervisorError(
                        f"supervisor not ready within {self.start_timeout} s:\n{self.log_text()}"
                    ) from None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode if self.proc is not None else None

    def kill(self, sig: int = signal.SIGKILL, timeout: float = 60.0) -> int:
        """Send ``sig`` and wait for the daemon to exit; return its exit code."""
        assert self.proc is not None
        self._close_dealer()
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise SupervisorError(f"supervisor did not exit within {timeout} s of {signal.Signals(sig).name}") from None

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM (jobs are cancelled with the grace period) and wait; SIGKILL if it hangs."""
        if self.proc is None or self.proc.poll() is not None:
            return self.returncode
        try:
            return self.kill(signal.SIGTERM, timeout)
        except SupervisorError:
            self.proc.kill()
            self.proc.wait()
            raise

    def restart(self) -> SupervisorProcess:
        if self.proc is not None and self.proc.poll() is None:
            self.stop()
        return self.start()

    def close(self) -> None:
        """Stop the daemon, close sockets, remove the temp dirs this helper created."""
        try:
            self.stop()
        finally:
            for sub in self._subs:
                sub.close()
            self._close_dealer()
            self._ctx.term()
            shutil.rmtree(self.runtime_dir, ignore_errors=True)
            if self._own_home:
                shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self) -> SupervisorProcess:  # noqa: PYI034 - start() returns self
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # -- control -------------------------------------------------------------------------
    def _close_dealer(self) -> None:
        if self._dealer is not None:
            self._dealer.close(linger=0)
            self._dealer = None

    def _socket(self) -> zmq.Socket[bytes]:
        if self._dealer is None:
            self._dealer = self._ctx.socket(zmq.DEALER)
            self._dealer.setsockopt(zmq.LINGER, 0)
            self._dealer.connect(self.settings.addresses.control)
        return self._dealer

    def request(self, payload: bytes, timeout: float = 30.0) -> dict[str, Any]:
        """Send raw bytes, return the decoded reply object. A timeout drops the socket (a late
        reply must not answer the next request)."""
        sock = self._socket()
        sock.send(payload)
        if not sock.poll(int(timeout * 1000)):
            self._close_dealer()
            raise TimeoutError(f"no reply within {timeout} s")
        reply: dict[str, Any] = orjson.loads(sock.recv())
        return reply

    def call(self, kind: str, timeout: float = 30.0, **fields: Any) -> dict[str, Any]:
        """One command; its ``data``, or ``CommandError`` for an error reply."""
        request_id = uuid.uuid4().hex
        message = {"v": PROTOCOL_VERSION, "id": request_id, "kind": kind, **fields}
        sock = self._socket()
        sock.send(orjson.dumps(message))
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not sock.poll(int(remaining * 1000)):
                self._close_dealer()
                raise TimeoutError(f"no reply to {kind!r} within {timeout} s")
            rid, data = parse_reply(sock.recv())
            if rid != request_id:
                continue  # a late reply to an earlier, timed-out request
            if isinstance(data, CommandError):
                raise data
            return data

    # -- conveniences --------------------------------------------------------------------
    def submit(self, job: str = "diagnostic", params: dict[str, Any] | None = None, **fields: Any) -> str:
        """Submit one task (``task_type`` follows from ``job``); return its id."""
        from protocol.tasks import JOB_TASK_TYPES

        spec = {"task_type": JOB_TASK_TYPES[job], "job": job, "params": params or {}, **fields}
        data = self.call("submit", tasks=[spec])
        task_id: str = data["tasks"][0]["task_id"]
        return task_id

    def get(self, task_id: str) -> dict[str, Any]:
        task: dict[str, Any] = self.call("get", task_id=task_id)["task"]
        return task

    def wait_task(
        self, task_id: str, predicate: Callable[[dict[str, Any]], bool], timeout: float = 60.0, what: str = "condition"
    ) -> dict[str, Any]:
        """Ask ``get`` until ``predicate(task)``; raise ``TimeoutError`` with the last state."""
        deadline = time.monotonic() + timeout
        task = self.get(task_id)
        while not predicate(task):
            if time.monotonic() > deadline:
                raise TimeoutError(f"task {task_id}: {what} not met within {timeout} s; last state {task}")
            # A bounded wait for the next event of the task instead of a sleep.
            self.wait_event(0.05)
            task = self.get(task_id)
        return task

    def wait_final(self, task_id: str, timeout: float = 60.0) -> dict[str, Any]:
        return self.wait_task(task_id, lambda t: t["status"] in FINAL_STATUSES, timeout, "final status")

    def wait_event(self, timeout: float) -> None:
        """Return once any event is published (all waiting are read), or after ``timeout``: a
        bounded wait between two looks at the daemon, instead of a sleep."""
        if not hasattr(self, "_waiter"):
            self._waiter = EventSubscriber(self._ctx, self.settings.addresses.events_out, b"")
            self._subs.append(self._waiter)
        sock = self._waiter.sock
        if sock.poll(int(timeout * 1000)):
            while sock.poll(0):
                sock.recv_multipart()

    def logs(self, task_id: str) -> list[dict[str, Any]]:
        """Every stored event of ``task_id`` in ``seq`` order."""
        out: list[dict[str, Any]] = []
        while True:
            data = self.call("logs", task_id=task_id, after=len(out))
            out.extend(data["events"])
            if not data["events"] or len(out) >= data["last_seq"]:
                return out

    def stored_tasks(self) -> list[dict[str, Any]]:
        """Every task row as stored, read from the SQLite file itself (whether the daemon runs
        or not): the fields the API does not show too (``cgroup``, ``pid_started``)."""
        import sqlite3

        if not self.settings.db_path.exists():
            return []
        db = sqlite3.connect(str(self.settings.db_path), timeout=10)
        try:
            db.row_factory = sqlite3.Row
            return [dict(row) for row in db.execute("SELECT * FROM tasks ORDER BY ord")]
        finally:
            db.close()

    def subscribe(self, topic: bytes = b"", timeout: float = 10.0) -> EventSubscriber:
        """A subscriber on events-out whose subscription the supervisor has already counted."""
        before = self.call("health")["subscriptions_seen"]
        sub = EventSubscriber(self._ctx, self.settings.addresses.events_out, topic, monitor=True)
        self._subs.append(sub)
        deadline = time.monotonic() + timeout
        sub.wait_connected(timeout)
        # The subscription has been sent; the daemon counts it when its loop reads it. Each
        # health question is a round trip through that loop: a question or two at most.
        # (Counted as seen, not as live: another subscriber leaving meanwhile would hide it.)
        while self.call("health", timeout=max(0.1, deadline - time.monotonic()))["subscriptions_seen"] <= before:
            if time.monotonic() > deadline:
                raise TimeoutError("the supervisor did not see the subscription")
        return sub
