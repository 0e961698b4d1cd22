"""The store's WAL checkpoints (``supervisor.store``): copied into the database on a connection
of their own, in a worker thread (``supervisor.upkeep``), each after syncing the event files
written since the last (``supervisor.event_files``)."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

from supervisor.event_files import EventFiles

log = logging.getLogger(__name__)

#: WAL size past which a checkpoint that a steady writer keeps from finishing is finished on
#: the writer's connection (``Store.finish_checkpoint``): the writer pauses for that (a few
#: milliseconds) once per this many bytes of WAL (every few seconds at 1,000 lone events/s).
WAL_RESTART_BYTES = 256 << 20
#: ``journal_size_limit``: the commit that starts the WAL over truncates a longer file to this,
#: on the writer (truncating 192 MB took 12-50 ms here), so it is above ``WAL_RESTART_BYTES`` by
#: about a second of writing (checks are that far apart): only the WAL after a flood is cut.
WAL_SIZE_LIMIT = WAL_RESTART_BYTES + (64 << 20)
#: Threaded checkpoint passes at most per ``Checkpointer.run``, and how short the last must have
#: been for the writer to finish the rest (what was committed during it, a few milliseconds).
CHECKPOINT_PASSES = 4
SHORT_PASS_SECONDS = 0.02


def sync_files(files: EventFiles) -> None:
    """``files.sync()``; a failure is logged (those files are synced again next time)."""
    try:
        files.sync()
    except OSError as exc:
        log.warning("event files not synced: %s", exc)


class Checkpointer:
    """Checkpoints of the store at ``path``, whose event files are ``files``."""

    def __init__(self, path: Path, files: EventFiles) -> None:
        self.path = path
        self._files = files
        self._db: sqlite3.Connection | None = None
        self._page = 0  # the database's page size, read once connected
        self._lock = threading.Lock()  # close() must not race a running checkpoint

    def run(self) -> bool:
        """Copy committed WAL pages into the database without blocking the writer (PASSIVE).
        Thread-safe with respect to the writer: it uses a connection of its own; call it from
        one worker thread at a time.

        Returns whether the writer should finish it (``Store.finish_checkpoint``): the WAL holds
        more than ``WAL_RESTART_BYTES`` and the last pass was short, so that little can have been
        committed during it (after a long pass, another one takes most of that, up to
        ``CHECKPOINT_PASSES``). SQLite starts the WAL over only when a write begins with every
        frame checkpointed, which a writer that commits while each pass runs never allows:
        measured, the WAL grew by 40 MB a second at 1,000 lone events a second, without bound."""
        with self._lock:
            # The runs in event files first: a row checkpointed into the database (synced)
            # then finds its run on the disk after a power loss (``supervisor.event_files``).
            sync_files(self._files)
            if self._db is None:
                self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
                self._db.execute("PRAGMA busy_timeout=5000")
                self._page = int(self._db.execute("PRAGMA page_size").fetchone()[0])
            db, page = self._db, self._page
            for _ in range(CHECKPOINT_PASSES):
                start = time.monotonic()
                frames = int(db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1])
                if frames * page <= WAL_RESTART_BYTES:
                    return False
                if time.monotonic() - start <= SHORT_PASS_SECONDS:
                    return True
        return False  # a flood outran every pass: again next time

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
