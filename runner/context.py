"""The job context: what a job sees of its process — its spec, its events, the stop flag."""

from __future__ import annotations

import os
import select
import signal
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from protocol import events as ev
from protocol.jobs import JobConfig, JobSpec
from runner.publisher import Publisher

#: Job parameters whose values are secrets (the upload ``token``).
SECRET_PARAMS = ("token",)
REDACTED = "***"


def secret_forms(values: Iterable[Any]) -> tuple[str, ...]:
    """Every form in which a secret can show up in a message: as given, without surrounding
    whitespace, and escaped as ``repr`` writes it (how exception messages quote values).
    Longest first, so that a longer form is replaced before a part of it."""
    forms: set[str] = set()
    for value in values:
        if not isinstance(value, str) or not value:
            continue
        for v in (value, value.strip()):
            forms |= {v, repr(v)[1:-1], v.encode("unicode_escape").decode("ascii")}
    return tuple(sorted((f for f in forms if f), key=len, reverse=True))


def redact(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def _redact_value(value: Any, secrets: tuple[str, ...]) -> Any:
    if isinstance(value, str):
        return redact(value, secrets)
    if isinstance(value, dict):
        return {k: _redact_value(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redact_value(v, secrets) for v in value]
    return value


class Cancelled(Exception):
    """Raised at a safe point once a stop was requested (SIGTERM); the job ends ``cancelled``."""


class StopFlag:
    """A stop request that a signal handler may set.

    Not a ``threading.Event``: its ``set`` takes a lock, and a handler that runs while the
    main thread holds that same lock (inside ``Event.wait``) deadlocks. Here ``set`` only
    assigns a bool and writes a byte to a pipe (async-signal-safe); ``wait`` selects on it.
    """

    def __init__(self) -> None:
        self._set = False
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)

    def set(self) -> None:
        self._set = True
        try:
            os.write(self._write_fd, b"\0")
        except BlockingIOError:  # the pipe is full: a wake-up is already pending
            pass

    def is_set(self) -> bool:
        return self._set

    def wake_on_signals(self) -> None:
        """Make every caught signal wake ``wait`` (call from the main thread, once the
        handlers are installed). The kernel may deliver SIGTERM to any thread (zmq's, the
        publisher's); the Python handler then runs in the main thread only once that thread
        returns from its ``select``, which without this wake-up byte is when the wait ends."""
        signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)

    def fileno(self) -> int:
        """The pipe's read end: readable once a wake-up byte is pending (for a loop that polls
        other sockets too, e.g. a serving replica's ``zmq.Poller``; then ``consume_wakeups``)."""
        return self._read_fd

    def consume_wakeups(self) -> None:
        """Read the pending wake-up bytes (call when ``fileno`` polled readable)."""
        readable, _, _ = select.select([self._read_fd], [], [], 0)
        if readable:
            os.read(self._read_fd, 512)

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the flag; return whether it is set."""
        deadline = time.monotonic() + max(0.0, timeout)
        while not self._set:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            readable, _, _ = select.select([self._read_fd], [], [], left)
            if readable:  # a wake-up byte: the handler runs before the loop test
                os.read(self._read_fd, 512)
        return self._set


class JobContext:
    """Passed to every job. Events go through ``log``/``progress``/``metrics``/``result``.

    ``stop_requested`` is set by the SIGTERM handler (which only sets the flag); a job checks
    it at its safe points with ``check_stop()`` or waits on it with ``wait(seconds)``.
    """

    def __init__(self, spec: JobSpec, publisher: Publisher) -> None:
        self.spec = spec
        self.params: dict[str, Any] = spec.params
        self.config: JobConfig = spec.config
        self.device = spec.device
        self.task_dir = Path(spec.task_dir)
        self.stop_requested = StopFlag()
        self._pub = publisher
        self._last_progress = -1
        self._secrets = secret_forms(self.params.get(key) for key in SECRET_PARAMS)

    # -- events ------------------------------------------------------------------------
    def log(self, message: str, level: str = "INFO", **fields: Any) -> None:
        self._emit(ev.LOG, message, level, fields)

    def warning(self, message: str, **fields: Any) -> None:
        self._emit(ev.LOG, message, "WARNING", fields)

    def error(self, message: str, **fields: Any) -> None:
        self._emit(ev.LOG, message, "ERROR", fields)

    def progress(self, percent: float, message: str | None = None, **fields: Any) -> None:
        """Report progress (0–100). Unchanged whole percentages without a message are skipped."""
        pct = max(0, min(100, int(percent)))
        if message is None and pct == self._last_progress and not fields:
            return
        self._last_progress = pct
        self._emit(ev.PROGRESS, message or f"progress {pct}%", "INFO", dict(fields, progress=pct))

    def metrics(self, message: str, metrics: dict[str, Any], **fields: Any) -> None:
        self._emit(ev.METRICS, message, "INFO", dict(fields, metrics=metrics))

    def result(self, message: str, result: dict[str, Any], **fields: Any) -> None:
        self._emit(ev.RESULT, message, "INFO", dict(fields, result=result))

    def emit(self, kind: str, message: str, level: str = "INFO", **fields: Any) -> None:
        self._emit(kind, message, level, fields)

    def _emit(self, kind: str, message: str, level: str, fields: dict[str, Any]) -> None:
        """The one way out for every event of the job (log, metrics, result, the final status
        with its error message): a secret of the job never leaves in one."""
        if self._secrets:
            message = redact(message, self._secrets)
            fields = {k: _redact_value(v, self._secrets) for k, v in fields.items()}
        self._pub.emit(kind, message, level, **fields)

    def flush(self) -> None:
        """Journal and send every event emitted so far (before an abrupt exit)."""
        self._pub.flush()

    # -- stopping ----------------------------------------------------------------------
    def check_stop(self) -> None:
        """Raise ``Cancelled`` if a stop was requested. Call at safe points (batch boundaries)."""
        if self.stop_requested.is_set():
            raise Cancelled("stopped on request")

    def wait(self, seconds: float) -> None:
        """Sleep up to ``seconds``; raise ``Cancelled`` as soon as a stop is requested."""
        if self.stop_requested.wait(max(0.0, seconds)):
            raise Cancelled("stopped on request")
