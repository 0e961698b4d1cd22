"""The supervisor's own writes that the disk refused, kept in order until they are stored.

What the supervisor records of what it did (a runner started, a cancel asked for, a task's end,
a deployment's state: an event and the task's record, ``Pipeline.emit`` and ``save``) never
waits on the disk and is never lost to it. When the disk refuses it (a full disk: SQLite's
``SQLITE_FULL``, an event file's ``ENOSPC``), the daemon goes on as if it were stored (the
slot is freed, the job signalled, the next task started) and the writes wait here, in memory,
in the order they were made. They are stored before any newer event of their tasks
(``Pipeline.store_backlog`` comes first in every write of the pipeline) and by the daemon's
retry (``retry_delays``) until the disk takes them; ``health`` says how many wait.

An event waiting here has no ``seq`` of its own yet: it is numbered when it is stored, after
what its task has stored, so that no ``seq`` is skipped or given twice however often the disk
refuses it. A runner's held final event (``Pipeline.release_final``) keeps the number it was
given when it came in. A write whose task is not stored (a submit rolled back whole) is
dropped: there is nothing to attach it to.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

from protocol.tasks import TaskRecord
from supervisor.event_runs import Row
from supervisor.store import Store

log = logging.getLogger(__name__)

#: The daemon's retry of what waits: first after this many seconds, then twice as long each
#: time, at most ``RETRY_MAX_SECONDS``.
RETRY_FIRST_SECONDS = 0.1
RETRY_MAX_SECONDS = 5.0
#: The pipeline's ``_flush``: store ``rows`` and the ``dirty`` tasks, and run the last argument
#: if that is rolled back.
Flush = Callable[[list[Row], dict[str, TaskRecord], Callable[[], None]], None]
#: What a write the disk refuses raises (SQLite: ``SQLITE_FULL``, ``SQLITE_IOERR``, and a
#: transaction lost to them, ``TransactionLost``).
DISK_ERRORS = (OSError, sqlite3.OperationalError)


@dataclass(slots=True)
class Write:
    """One write of the supervisor's own: ``task``'s record as it is when stored, and an event."""

    task: TaskRecord
    #: The event's JSON with ``seq`` its first key (``renumber`` sets it); None: the record alone.
    event: bytes | None = None
    #: The event's fixed number (a runner's held final event); None: numbered when stored.
    seq: int | None = None


def renumber(event: bytes, seq: int) -> bytes:
    """``event`` (JSON with ``seq`` its first key, as the supervisor writes every line) with
    ``seq`` set to ``seq``."""
    return b'{"seq":%d,' % seq + event[event.index(b",") + 1 :]


def retry_delays() -> Iterator[float]:
    """Seconds to wait before each retry: ``RETRY_FIRST_SECONDS``, doubling up to the most."""
    delay = RETRY_FIRST_SECONDS
    while True:
        yield delay
        delay = min(delay * 2, RETRY_MAX_SECONDS)


class Backlog:
    """The writes waiting, oldest first. ``on_waiting`` is called each time writes are put back
    into an empty backlog (the daemon's retry starts then, if it is not running)."""

    def __init__(self) -> None:
        self._writes: list[Write] = []
        self.on_waiting: Callable[[], None] | None = None
        self._refusing = False  # (the disk refused, and writes wait: said once in the log)

    def __len__(self) -> int:
        return len(self._writes)

    def add(self, writes: list[Write]) -> None:
        self._writes.extend(writes)

    def take(self) -> list[Write]:
        writes, self._writes = self._writes, []
        return writes

    def put_back(self, writes: list[Write], store: Store) -> None:
        """``writes`` (taken, then not stored: their transaction was rolled back) go back,
        before any kept since: those of tasks still stored (a submit rolled back took its
        tasks, and what was written of them, with it)."""
        idle = not self._writes
        self._writes[:0] = [write for write in writes if store.ord_of(write.task.task_id)]
        if self._writes and idle and self.on_waiting is not None:
            self.on_waiting()

    def store(self, store: Store, flush: Flush) -> bool:
        """Store the writes that wait, oldest first, in one transaction (``flush``: the
        pipeline's; a ``store.batch``'s transaction, inside one); True when none is left.
        Refused again, they wait on; rolled back with the batch they were part of, they wait
        again (``flush``'s ``undo``)."""
        writes = self.take()
        if not writes:
            return True
        rows: list[Row] = []
        dirty: dict[str, TaskRecord] = {}
        for write in writes:
            task = write.task
            if task.task_id not in dirty and not store.ord_of(task.task_id):  # (0: not stored)
                log.warning("task %s is not stored (its submit was rolled back): its write dropped", task.task_id)
                continue
            dirty[task.task_id] = task
            if write.event is None:
                continue
            if write.seq is None:
                task.last_seq += 1
                rows.append((task.task_id, task.last_seq, task.last_seq, renumber(write.event, task.last_seq)))
            else:
                task.last_seq = max(task.last_seq, write.seq)
                rows.append((task.task_id, write.seq, write.seq, write.event))
        if not dirty:
            return not self._writes  # (every one of them dropped)
        try:
            flush(rows, dirty, partial(self.put_back, writes, store))
        except DISK_ERRORS as exc:
            self._failed(exc)
            return False
        except sqlite3.Error:  # (not the disk's doing: never stored however often tried)
            log.exception("the supervisor's writes of task(s) %s could not be stored: dropped", ", ".join(dirty))
            self._writes = [w for w in self._writes if not any(w is x for x in writes)]
            return not self._writes
        if self._refusing and not self._writes:
            log.warning("the supervisor's writes kept while the disk refused them are stored")
            self._refusing = False
        return not self._writes

    def _failed(self, exc: BaseException) -> None:
        """The disk refused what was taken (and put back)."""
        if not self._refusing:
            log.error(
                "the disk refused the supervisor's writes (%s: %s): %d kept in memory, stored once it takes them",
                type(exc).__name__,
                exc,
                len(self._writes),
            )
        self._refusing = True
