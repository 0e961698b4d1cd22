"""Event bodies outside SQLite: one append-only file per task, beside the store.

A run of events bigger than ``event_runs.INLINE_BYTES`` (a burst's batch, typically hundreds of
log lines) is appended to its task's file, ``<store>-events/<ord>.jsonl``, and its row in the
``events`` table holds where (``at``, ``size``) instead of the bytes. Written once by one
``write`` call, against three times through SQLite (its WAL, the checkpoint's read of it, the
database file), with none of the page bookkeeping: measured with 1 KiB events in runs of 200,
0.7 against 2.7 µs of CPU an event, writer and checkpoint together (``supervisor.event_runs``).

Each run is followed by a newline, so a task's file is JSON lines (its runner's own lines
without a ``seq``, numbered by their place: ``protocol.events.numbered``).

Crash rules (``supervisor.store``):

- **Stored before published**: a run is written (to the OS, like a SQLite commit in WAL mode)
  before the transaction holding its row commits, and published after that commit.
- **Written, never committed** (the daemon killed in between, a rolled back transaction): bytes
  no row points at. The first append to the file after the store is opened again cuts it back
  to the end of the last stored run (``end_of``); until then they are only unreferenced.
- **Deleted**: a task's file goes once the commit that deletes its rows is done; a file whose
  task is gone (a crash in between) is removed when the store is opened (``sweep``).
- **Power loss**: like the WAL's ``synchronous=NORMAL``, appends are not synced one by one.
  ``sync`` (before each WAL checkpoint) syncs every file written since the last, so that a run
  whose row reaches the database file has reached the disk first, save what was committed
  during the checkpoint itself. A run that did not survive reads as lost (``read``: None; its
  bytes must end in a newline and start with its first ``seq``), the events after it still
  read, and a file cut short is extended back to where its last stored run ends before it is
  appended to: a new run never goes where a lost one's row points.

Page cache: a run is read again only when a client asks for events it missed (``logs``, a
stream resumed), mostly the latest. So once ``sync`` has put a file on the disk, its pages go
back to the kernel but the last ``KEEP_CACHED`` bytes, and a flood of events leaves no more
than that of each task behind in memory. On this project's VM it also halved the daemon's CPU
in a burst (1.5–2.0 instead of 3.3–5.1 µs an event, ``benchmarks.events``): a write to pages the
kernel had not used lately cost ten times one to pages it had just freed, its host taking free
memory back (2.30 against 0.21 µs a KiB: ``benchmarks.pagecache``).
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path

log = logging.getLogger(__name__)

#: File descriptors kept open for appending (the tasks writing now; more are reopened).
OPEN_FILES = 128
SUFFIX = ".jsonl"
#: The end of a task's file kept in the page cache once synced (``EventFiles.sync``).
KEEP_CACHED = 1 << 20


class EventFiles:
    """The directory of a store's event files. Appends, reads and removals come from the
    store's (event-loop) thread; ``sync`` from the checkpoint thread."""

    def __init__(self, directory: Path, end_of: Callable[[int], int]) -> None:
        """``end_of(ord)``: where a task's last stored run ends (0: none), asked when its file
        is first opened for appending (the crash rules)."""
        directory.mkdir(mode=0o700, exist_ok=True)
        self.directory = directory
        #: ord -> [descriptor, size], least recently appended first.
        self._open: OrderedDict[int, list[int]] = OrderedDict()
        self._dirty: set[int] = set()
        #: Tasks whose file was opened since the store was: its end is where this process wrote.
        self._seen: set[int] = set()
        self._lock = threading.Lock()  # the descriptor table, against ``sync``'s dup
        self._end_of = end_of

    def path(self, ord_: int) -> Path:
        return self.directory / f"{ord_}{SUFFIX}"

    def append(self, ord_: int, run: bytes) -> int:
        """Append ``run`` and a newline to task ``ord_``'s file; returns where ``run`` starts.
        Raises ``OSError`` (the disk full): nothing of the run counts as written then."""
        entry = self._open.get(ord_)
        if entry is None:
            entry = self._reopen(ord_)
        else:
            self._open.move_to_end(ord_)
        fd, at = entry
        want = len(run) + 1
        try:
            written = os.writev(fd, [run, b"\n"])
            while written < want:  # (a short write: what a signal or a full disk can cause)
                written += os.write(fd, (run + b"\n")[written:])
        except OSError:
            entry[1] = os.fstat(fd).st_size  # where the next run goes, whatever got written
            raise
        entry[1] = at + want
        with self._lock:
            self._dirty.add(ord_)
        return at

    def _reopen(self, ord_: int) -> list[int]:
        fd = os.open(self.path(ord_), os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        size = os.fstat(fd).st_size
        if ord_ not in self._seen:
            # The first time since the store opened, the file ends where its last stored run
            # does (rows this process adds come after): cut what was never committed; extend
            # what a power loss cut short, so that new runs never go where a lost one's row
            # points (the zeros read as lost). See the module's crash rules.
            self._seen.add(ord_)
            end = self._end_of(ord_)
            if size != end:
                os.ftruncate(fd, end)
                log.info("event file %s set from %d to %d bytes, where its last stored run ends",
                         self.path(ord_).name, size, end)  # fmt: skip
                size = end
        entry = [fd, size]
        with self._lock:
            self._open[ord_] = entry
            while len(self._open) > OPEN_FILES:
                _, (old, _) = self._open.popitem(last=False)
                os.close(old)
        return entry

    def read(self, ord_: int, at: int, size: int, first: int) -> bytes | None:
        """The run stored at ``at``, whose first event is numbered ``first``; None where it is
        not all there (a power loss took it: not the run's bytes, or not all of them)."""
        entry = self._open.get(ord_)
        try:
            if entry is not None:
                data = os.pread(entry[0], size + 1, at)
            else:
                with open(self.path(ord_), "rb") as f:
                    data = os.pread(f.fileno(), size + 1, at)
        except FileNotFoundError:
            data = b""
        if len(data) != size + 1 or not data.endswith(b"\n") or not data.startswith(b'{"seq":%d,' % first):
            log.warning("event file %s: %d bytes at %d lost", self.path(ord_).name, size, at)
            return None
        return data[:-1]

    def remove(self, ord_: int) -> None:
        """Remove task ``ord_``'s file (its rows are gone)."""
        with self._lock:
            entry = self._open.pop(ord_, None)
            if entry is not None:
                os.close(entry[0])
            self._dirty.discard(ord_)
            self._seen.discard(ord_)
        try:
            self.path(ord_).unlink(missing_ok=True)
        except OSError as exc:  # (the store opened next removes it: ``sweep``)
            log.warning("event file of a deleted task not removed: %s", exc)

    def sweep(self, ords: Iterable[int]) -> int:
        """Remove the files of tasks not in ``ords`` (the stored ones); returns how many."""
        keep = {f"{o}{SUFFIX}" for o in ords}
        gone = 0
        for entry in os.scandir(self.directory):
            if entry.name.endswith(SUFFIX) and entry.name not in keep:
                os.unlink(entry.path)
                gone += 1
        return gone

    def sync(self) -> None:
        """Sync every file appended to since the last ``sync`` (any thread), then let the page
        cache go of what it synced but the file's last ``KEEP_CACHED`` bytes (the module's
        "Page cache"). Raises the first ``OSError``, having tried every file; those not synced
        are tried again next time."""
        with self._lock:  # a duplicate stays valid whatever the store's thread closes meanwhile
            dirty, self._dirty = self._dirty, set()
            # (descriptor, where the file ends: what the sync covers; None: a file not open)
            fds: list[tuple[int, int, int | None]] = [
                (o, os.dup(self._open[o][0]), self._open[o][1]) for o in dirty if o in self._open
            ]
            closed = [o for o in dirty if o not in self._open]  # (more tasks wrote than stay open)
        failed: list[int] = []
        error: OSError | None = None
        for ord_ in closed:
            try:
                fds.append((ord_, os.open(self.path(ord_), os.O_RDONLY | os.O_CLOEXEC), None))
            except FileNotFoundError:
                pass  # removed with its task
            except OSError as exc:
                failed.append(ord_)
                error = error or exc
        for ord_, fd, end in fds:
            try:
                os.fdatasync(fd)
                _let_go(fd, (os.fstat(fd).st_size if end is None else end) - KEEP_CACHED)
            except OSError as exc:
                failed.append(ord_)
                error = error or exc
            finally:
                os.close(fd)
        if error is not None:
            with self._lock:
                self._dirty.update(failed)
            raise error

    def close(self) -> None:
        with self._lock:
            for fd, _ in self._open.values():
                os.close(fd)
            self._open.clear()


def _let_go(fd: int, end: int) -> None:
    """Drop the file's clean pages before ``end`` from the page cache (advice: never fails)."""
    if end > 0:
        try:
            os.posix_fadvise(fd, 0, end, os.POSIX_FADV_DONTNEED)
        except OSError as exc:
            log.debug("event file pages kept: %s", exc)
