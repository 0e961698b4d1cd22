"""The runner's event publisher: XPUB with NODROP, a journal, gap-free ``rseq``, batching.

PUB/SUB drops silently before the subscription arrives (slow joiner) and at the high-water
mark. So: an XPUB socket that waits for the supervisor's subscription before the first event,
``XPUB_NODROP`` so a full queue blocks (back-pressure) instead of dropping, and every event
numbered.

``emit`` serialises the event and queues it; one sender thread appends everything queued to
``events.jsonl`` in the task directory and then sends it as one message ``[task_id, events]``,
the events packed into one frame (``protocol.events.pack``: the journal's lines); a run of
plain log lines as ``[task_id, events, PLAIN]``, which the supervisor stores and publishes
without reading each line (``protocol.events.is_plain``). At a low rate
each event goes out alone at once, written by the emitting thread itself when nothing is queued
(no hop to the sender thread); at a high rate events coalesce into batches, which is what makes
50,000 events/s possible (a ZeroMQ message, and each frame, costs microseconds whatever its
size). The journal is
written *before* the send: when the supervisor is away (restarted, slow) the journal is how it
catches up, so no event is ever lost. A journal the disk refuses (full) is no reason to stop the
job or its events: they are sent without it, and it stays whole lines (``_journal``).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import zmq

from protocol import events as ev

log = logging.getLogger(__name__)

#: Messages queued towards the supervisor before ``send`` blocks.
SNDHWM = 10_000
#: A send that cannot make progress for this long gives up on the socket; the journal has it.
SNDTIMEO_MS = 5_000
#: Most events in one message.
MAX_BATCH = 1_000
#: The journal's pages are let go from the page cache (``Publisher._let_go``) each time this many
#: bytes more were written, all but the last ``JOURNAL_CACHED`` bytes (what a catch-up reads).
JOURNAL_LET_GO_BYTES = 8 << 20
JOURNAL_CACHED = 1 << 20
#: Seconds since the previous event that make an event lone: sent by the emitting thread
#: itself, not queued for the sender thread (``Publisher.emit``).
LONE_GAP = 0.000_25


class _Clock:
    """ISO 8601 UTC timestamps with milliseconds, formatting the date part once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def now(self) -> str:
        t = time.time()
        second = int(t)
        if second != self._second:
            self._second = second
            self._prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{self._prefix}.{int((t - second) * 1000):03d}+00:00"


class Publisher:
    """Publishes one task's events. ``emit`` may be called from any thread."""

    def __init__(
        self,
        task_id: str,
        endpoint: str,
        journal: Path,
        *,
        start_rseq: int = 0,
        curve: tuple[str, str, str] | None = None,
    ) -> None:
        """``curve``: ``(server public key, own public key, own secret key)`` in Z85, to connect
        as a CURVE client (events over TCP between nodes); None: no security mechanism (IPC in
        the runtime directory, mode 0700)."""
        self.task_id = task_id
        self._topic = task_id.encode()
        self.rseq = start_rseq
        self._clock = _Clock()
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.XPUB)
        self._sock.setsockopt(zmq.XPUB_NODROP, 1)
        self._sock.setsockopt(zmq.SNDHWM, SNDHWM)
        self._sock.setsockopt(zmq.SNDTIMEO, SNDTIMEO_MS)
        self._sock.setsockopt(zmq.LINGER, 5_000)
        if curve is not None:
            self._sock.setsockopt(zmq.CURVE_SERVERKEY, curve[0].encode())
            self._sock.setsockopt(zmq.CURVE_PUBLICKEY, curve[1].encode())
            self._sock.setsockopt(zmq.CURVE_SECRETKEY, curve[2].encode())
        self._sock.connect(endpoint)
        self._journal_fd = os.open(journal, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        #: The journal's size, and what it was when its pages were last let go.
        self._journal_end = self._let_go_at = os.fstat(self._journal_fd).st_size
        self._journal_refused = False  # the last journal write failed (a full disk)
        #: Encoded events queued for the sender, and the places among them of those that are not
        #: plain log lines (``protocol.events.is_plain``), in order.
        self._pending: list[bytes] = []
        self._not_plain: list[int] = []
        self._cond = threading.Condition()
        #: Held from taking a batch to having sent it, so batches never overtake each other.
        self._write_lock = threading.Lock()
        self._closing = False
        self._sender: threading.Thread | None = None
        self._last_emit = 0.0  # time.monotonic() of the previous emit

    def wait_for_subscriber(self, timeout: float) -> bool:
        """Block until the supervisor's subscription arrives (True) or ``timeout`` passes.

        Starts the sender either way: without a subscriber events still reach the journal.
        """
        connected = bool(self._sock.poll(int(timeout * 1000), zmq.POLLIN))
        if connected:
            self._sock.recv()  # b"\x01" + prefix: the subscription itself
        self._start_sender()
        return connected

    def emit(self, kind: str, message: str, level: str = "INFO", **fields: Any) -> int:
        """Queue one event; returns its ``rseq``. ``None`` fields are left out.

        A lone event (``LONE_GAP`` after the previous one, nothing queued or being written,
        room on the socket) is journaled and sent by the calling thread itself: waking the
        sender thread would add a thread hop, and under CPU load every hop of a job's thread
        waits for the scheduler. Closer events queue for the sender thread, which batches
        them (written one by one, a burst would cost a message and a journal write each)."""
        with self._cond:
            self.rseq += 1
            rseq = self.rseq
            data = ev.encode(ev.runner_event(rseq, self.task_id, self._clock.now(), kind, level, message, fields))
            plain = ev.is_plain(kind, level, message, fields)
            now = time.monotonic()
            lone, self._last_emit = now - self._last_emit >= LONE_GAP, now
            direct = (
                lone
                and self._sender is not None
                and not self._pending
                and not self._closing
                and self._write_lock.acquire(blocking=False)
            )
            if direct and not int(self._sock.get(zmq.EVENTS)) & zmq.POLLOUT:
                # The supervisor is not reading right now: never block the job on it.
                self._write_lock.release()
                direct = False
            if not direct:
                if not plain:
                    self._not_plain.append(len(self._pending))
                self._pending.append(data)
                if len(self._pending) == 1:
                    self._cond.notify()
                return rseq
        try:
            self._write([data], [] if plain else [0])  # ordered: a later event queues until this write is done
        finally:
            self._write_lock.release()
        return rseq

    def flush(self) -> None:
        """Write and send everything queued so far (before an abrupt exit, say)."""
        with self._write_lock:
            with self._cond:
                batch, self._pending = self._pending, []
                not_plain, self._not_plain = self._not_plain, []
            self._write(batch, not_plain)

    def close(self) -> None:
        """Send what is queued, then release the socket (flushing, bounded by LINGER)."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._sender is not None:
            self._sender.join()
        self.flush()
        self._sock.close()
        self._ctx.term()
        os.close(self._journal_fd)

    # -- the sender thread ----------------------------------------------------------------
    def _start_sender(self) -> None:
        if self._sender is None:
            self._sender = threading.Thread(target=self._send_loop, name="rfuav-events", daemon=True)
            self._sender.start()

    def _send_loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if not self._pending and self._closing:
                    return
            self.flush()

    def _write(self, batch: list[bytes], not_plain: list[int]) -> None:
        if not batch:
            return
        messages = self._messages(batch, not_plain)
        self._journal(b"\n".join(m[1] for m in messages) + b"\n")
        for message in messages:
            try:
                self._sock.send_multipart(message)
            except zmq.Again:
                # The supervisor is not reading; it catches up from the journal.
                log.warning("events not sent in %d ms; left in the journal", SNDTIMEO_MS)

    def _journal(self, lines: bytes) -> None:
        """Append ``lines`` to the journal whole, or not at all: a write the disk refuses (full)
        is cut back to the last whole line, and the events go out without it (the supervisor
        stores them as they come; only a catch-up would miss them)."""
        try:
            written = os.write(self._journal_fd, lines)
            if written != len(lines):
                raise OSError(errno.ENOSPC, f"{written} of {len(lines)} bytes written")
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(self._journal_fd, self._journal_end)
            if not self._journal_refused:
                log.warning("events journal not written (%s): events are sent without it until it is", exc)
            self._journal_refused = True
            return
        if self._journal_refused:
            log.warning("events journal written again")
            self._journal_refused = False
        self._journal_end += written
        if self._journal_end - self._let_go_at >= JOURNAL_LET_GO_BYTES:
            self._let_go()

    def _let_go(self) -> None:
        """Let the page cache go of the journal but its last ``JOURNAL_CACHED`` bytes: a burst of
        events writes it once, and it is read again only if the supervisor has to catch up (its
        tail). The kernel starts writing back what is dirty and drops what is clean: each call
        drops what the previous one started writing. Without it a flood leaves hundreds of
        megabytes of page cache behind, and takes that memory from the free pages that are
        quickest to reuse (on a VM whose host takes free memory back, writing to pages not used
        lately cost ten times as much here: ``benchmarks.pagecache``)."""
        self._let_go_at = self._journal_end
        try:
            os.posix_fadvise(self._journal_fd, 0, self._journal_end - JOURNAL_CACHED, os.POSIX_FADV_DONTNEED)
        except OSError as exc:  # (advice only)
            log.debug("journal pages kept: %s", exc)

    def _messages(self, batch: list[bytes], not_plain: list[int]) -> list[list[bytes]]:
        """``batch`` as messages of up to ``MAX_BATCH`` events, packed: each run of plain log
        lines marked ``PLAIN``, each run of the others (at ``not_plain``) not."""
        out: list[list[bytes]] = []
        topic = self._topic

        def add(start: int, end: int, plain: bool) -> None:
            for first in range(start, end, MAX_BATCH):
                packed = ev.pack(batch[first : min(end, first + MAX_BATCH)])
                out.append([topic, packed, ev.PLAIN] if plain else [topic, packed])

        start, i, n = 0, 0, len(not_plain)
        while i < n:
            j = i
            while j + 1 < n and not_plain[j + 1] == not_plain[j] + 1:
                j += 1
            add(start, not_plain[i], True)
            add(not_plain[i], not_plain[j] + 1, False)
            start, i = not_plain[j] + 1, j + 1
        add(start, len(batch), True)
        return out
