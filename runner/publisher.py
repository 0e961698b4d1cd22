"""The runner's event publisher: XPUB with NODROP, a journal, gap-free ``rseq``.

PUB/SUB drops silently before the subscription arrives (slow joiner) and at the high-water
mark. So: an XPUB socket that waits for the supervisor's subscription before the first event,
``XPUB_NODROP`` so a full queue blocks (back-pressure) instead of dropping, and every event
numbered. Each event is also appended to ``events.jsonl`` in the task directory *before* it
is sent: when the supervisor is away (restarted, slow) the journal is how it catches up, so
no event is ever lost.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import orjson
import zmq

from protocol.tasks import now_iso

log = logging.getLogger(__name__)

#: Messages queued towards the supervisor before ``send`` blocks.
SNDHWM = 100_000
#: A send that cannot make progress for this long gives up on the socket; the journal has it.
SNDTIMEO_MS = 5_000


class Publisher:
    """Publishes one task's events. Not thread-safe: use from one thread."""

    def __init__(self, task_id: str, endpoint: str, journal: Path, *, start_rseq: int = 0) -> None:
        self.task_id = task_id
        self._topic = task_id.encode()
        self.rseq = start_rseq
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.XPUB)
        self._sock.setsockopt(zmq.XPUB_NODROP, 1)
        self._sock.setsockopt(zmq.SNDHWM, SNDHWM)
        self._sock.setsockopt(zmq.SNDTIMEO, SNDTIMEO_MS)
        self._sock.setsockopt(zmq.LINGER, 5_000)
        self._sock.connect(endpoint)
        self._journal_fd = os.open(journal, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._connected = False

    def wait_for_subscriber(self, timeout: float) -> bool:
        """Block until the supervisor's subscription arrives (True) or ``timeout`` passes."""
        if self._sock.poll(int(timeout * 1000), zmq.POLLIN):
            self._sock.recv()  # b"\x01" + prefix: the subscription itself
            self._connected = True
        return self._connected

    def emit(self, kind: str, message: str, level: str = "INFO", **fields: Any) -> int:
        """Journal and send one event; returns its ``rseq``. ``None`` fields are left out."""
        self.rseq += 1
        event: dict[str, Any] = {
            "rseq": self.rseq,
            "task_id": self.task_id,
            "timestamp": now_iso(),
            "kind": kind,
            "level": level,
            "message": message,
        }
        for key, value in fields.items():
            if value is not None:
                event[key] = value
        payload = orjson.dumps(event)
        os.write(self._journal_fd, payload + b"\n")
        try:
            self._sock.send_multipart((self._topic, payload), copy=False)
        except zmq.Again:
            # The supervisor is not reading; it catches up from the journal.
            log.warning("event %d not sent in %d ms; left in the journal", self.rseq, SNDTIMEO_MS)
        return self.rseq

    def close(self) -> None:
        """Flush queued events (bounded by LINGER) and release the socket and journal."""
        self._sock.close()
        self._ctx.term()
        os.close(self._journal_fd)
