"""The SQLite store: tasks and their events, in one file in WAL mode.

``tasks`` mirrors ``protocol.tasks.TaskRecord`` column for column (dicts as JSON text; the
``token`` in ``params`` is kept for the runner and never leaves through ``TaskRecord.response``).
``events`` holds every stored event as its JSON bytes under ``(task_id, seq)``.

WAL with ``synchronous=NORMAL``: a commit is durable against a crash of this process (the
daemon's ``kill -9`` case) and needs no fsync; only a power loss may lose the last commits.
Events are written in batches (``append_events`` + ``commit``) — one transaction per batch is
what makes tens of thousands of events per second possible.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from protocol.tasks import FINAL_STATUSES, TaskRecord

_FIELDS: tuple[dataclasses.Field[Any], ...] = dataclasses.fields(TaskRecord)
_NAMES: tuple[str, ...] = tuple(f.name for f in _FIELDS)
#: Fields stored as JSON text (dicts and optional dicts).
_JSON: frozenset[str] = frozenset(f.name for f in _FIELDS if "dict" in str(f.type))
_BOOL: frozenset[str] = frozenset(f.name for f in _FIELDS if "bool" in str(f.type))

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS tasks (
    {", ".join(n + (" TEXT PRIMARY KEY" if n == "task_id" else "") for n in _NAMES)},
    ord INTEGER NOT NULL DEFAULT 0
);
-- One index per listing filter, each ending in ord: a page never sorts or scans (status lookups
-- use the (status, ord) prefix). Counts are kept in memory (``Store.counts``).
DROP INDEX IF EXISTS tasks_status;
DROP INDEX IF EXISTS tasks_created;
CREATE INDEX IF NOT EXISTS tasks_ord ON tasks (ord);
CREATE INDEX IF NOT EXISTS tasks_type_ord ON tasks (task_type, ord);
CREATE INDEX IF NOT EXISTS tasks_status_ord ON tasks (status, ord);
CREATE INDEX IF NOT EXISTS tasks_type_status_ord ON tasks (task_type, status, ord);
CREATE TABLE IF NOT EXISTS events (
    task_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    json BLOB NOT NULL,
    PRIMARY KEY (task_id, seq)
);
"""
# Not WITHOUT ROWID: with ~1 KiB rows that layout stores each event inside the key b-tree and
# inserts ran at a quarter of the speed (measured: 11k vs 41k rows/s); a rowid table appends
# rows and keeps the (task_id, seq) index small. 16 KiB pages suit rows of this size (only
# effective when the file is created).


def _to_row(task: TaskRecord) -> list[Any]:
    row: list[Any] = []
    for name in _NAMES:
        value = getattr(task, name)
        if name in _JSON and value is not None:
            value = orjson.dumps(value).decode()
        row.append(value)
    return row


def _from_row(row: sqlite3.Row) -> TaskRecord:
    values: dict[str, Any] = {}
    for name in _NAMES:
        value = row[name]
        if name in _JSON and value is not None:
            value = orjson.loads(value)
        elif name in _BOOL and value is not None:
            value = bool(value)
        values[name] = value
    return TaskRecord(**values)


class Store:
    """One SQLite connection, used from the daemon's event-loop thread only."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA page_size=16384")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        # No automatic checkpoint inside a commit: copying the WAL back into the database
        # stalled the event loop for tens of milliseconds (p99 latency); ``checkpoint`` runs
        # on its own connection in a worker thread instead (the daemon calls it).
        self._db.execute("PRAGMA wal_autocheckpoint=0")
        self._db.execute(f"PRAGMA journal_size_limit={64 << 20}")
        self._db.executescript(_SCHEMA)
        # Task counts by (type, status), kept in memory from one count at open: totals cost the
        # same for ten tasks or a million, and a write pays a dict update (SQLite triggers
        # keeping a counts table tripled the cost of every insert and update: 92 -> 343 us).
        self._counts: Counter[tuple[str, str]] = Counter()
        for task_type, status, n in self._db.execute("SELECT task_type, status, COUNT(*) FROM tasks GROUP BY 1, 2"):
            self._counts[(task_type, status)] = n
        #: (type, status) of every task not yet final: the old status an update moves from.
        self._open: dict[str, tuple[str, str]] = {
            task_id: (task_type, status)
            for task_id, task_type, status in self._db.execute(
                "SELECT task_id, task_type, status FROM tasks WHERE status NOT IN (?, ?, ?)", sorted(FINAL_STATUSES)
            )
        }
        self._checkpointer: sqlite3.Connection | None = None
        self._checkpoint_lock = threading.Lock()  # close() must not race a running checkpoint
        self._in_tx = False
        self._ord = int(self._db.execute("SELECT COALESCE(MAX(ord), 0) FROM tasks").fetchone()[0])
        placeholders = ", ".join("?" for _ in _NAMES)
        self._insert_sql = f"INSERT INTO tasks ({', '.join(_NAMES)}, ord) VALUES ({placeholders}, ?)"
        self._update_sql = (
            f"UPDATE tasks SET {', '.join(n + ' = ?' for n in _NAMES if n != 'task_id')} WHERE task_id = ?"
        )

    # -- transactions ------------------------------------------------------------------
    def _begin(self) -> None:
        if not self._in_tx:
            self._db.execute("BEGIN")
            self._in_tx = True

    def commit(self) -> None:
        """Commit everything written since the last commit (no-op when nothing was)."""
        if self._in_tx:
            self._db.execute("COMMIT")
            self._in_tx = False

    def checkpoint(self) -> None:
        """Copy committed WAL pages into the database without blocking the writer (PASSIVE).
        Thread-safe with respect to the writer: it uses a connection of its own; call it from
        one worker thread at a time."""
        with self._checkpoint_lock:
            if self._checkpointer is None:
                self._checkpointer = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
                self._checkpointer.execute("PRAGMA busy_timeout=5000")
            self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def close(self) -> None:
        self.commit()
        with self._checkpoint_lock:
            if self._checkpointer is not None:
                self._checkpointer.close()
                self._checkpointer = None
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._db.close()

    # -- tasks ---------------------------------------------------------------------------
    def insert_tasks(self, tasks: Iterable[TaskRecord]) -> None:
        """Insert new tasks in one transaction (all or none). Raises ``sqlite3.IntegrityError``
        when an id exists."""
        self._begin()
        added = list(tasks)
        try:
            for task in added:
                self._ord += 1
                self._db.execute(self._insert_sql, [*_to_row(task), self._ord])
        except sqlite3.Error:
            self._db.execute("ROLLBACK")
            self._in_tx = False
            self._ord = int(self._db.execute("SELECT COALESCE(MAX(ord), 0) FROM tasks").fetchone()[0])
            raise
        self.commit()
        for task in added:
            self._counted(task.task_id, task.task_type, task.status)

    def update_task(self, task: TaskRecord, *, commit: bool = True) -> None:
        self._begin()
        row = _to_row(task)
        self._db.execute(self._update_sql, [*row[1:], row[0]])
        if commit:
            self.commit()
        old = self._open.get(task.task_id)
        if old is not None and old[1] != task.status:
            self._counts[old] -= 1
            self._counted(task.task_id, task.task_type, task.status)

    def _counted(self, task_id: str, task_type: str, status: str) -> None:
        self._counts[(task_type, status)] += 1
        if status in FINAL_STATUSES:
            self._open.pop(task_id, None)
        else:
            self._open[task_id] = (task_type, status)

    def get_task(self, task_id: str) -> TaskRecord | None:
        row = self._db.execute("SELECT * FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        return _from_row(row) if row is not None else None

    def exists(self, task_id: str) -> bool:
        return self._db.execute("SELECT 1 FROM tasks WHERE task_id = ?", (task_id,)).fetchone() is not None

    def list_tasks(
        self, task_type: str | None = None, status: str | None = None, limit: int = -1, before: int | None = None
    ) -> list[tuple[int, TaskRecord]]:
        """``(ord, task)`` newest first, optionally filtered; at most ``limit`` (-1: all), older
        than the task numbered ``before``. An index serves every combination."""
        sql = "SELECT * FROM tasks"
        where: list[str] = []
        args: list[Any] = []
        if task_type is not None:
            where.append("task_type = ?")
            args.append(task_type)
        if status is not None:
            where.append("status = ?")
            args.append(status)
        if before is not None:
            where.append("ord < ?")
            args.append(before)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY ord DESC LIMIT ?"
        args.append(limit)
        return [(int(r["ord"]), _from_row(r)) for r in self._db.execute(sql, args)]

    def tasks_in_order(self, status: str) -> list[TaskRecord]:
        """Tasks with ``status`` in submission order (recovery re-queues pending ones so)."""
        rows = self._db.execute("SELECT * FROM tasks WHERE status = ? ORDER BY ord", (status,))
        return [_from_row(r) for r in rows]

    def counts(self) -> dict[str, dict[str, int]]:
        """``{task_type: {status: n}}`` (kept in memory: no scan)."""
        out: dict[str, dict[str, int]] = {}
        for (task_type, status), n in self._counts.items():
            if n > 0:
                out.setdefault(task_type, {})[status] = n
        return out

    def delete_task(self, task_id: str) -> None:
        """Remove a finished task and its events."""
        row = self._db.execute("SELECT task_type, status FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        self._begin()
        self._db.execute("DELETE FROM events WHERE task_id = ?", (task_id,))
        gone = self._db.execute(
            "DELETE FROM tasks WHERE task_id = ? AND status IN (?, ?, ?)", (task_id, *sorted(FINAL_STATUSES))
        ).rowcount
        self.commit()
        if gone and row is not None:
            self._counts[(row[0], row[1])] -= 1

    # -- events --------------------------------------------------------------------------
    def append_events(self, rows: list[tuple[str, int, bytes]]) -> None:
        """Queue ``(task_id, seq, json)`` rows in the open transaction; ``commit`` ends it."""
        self._begin()
        self._db.executemany("INSERT INTO events (task_id, seq, json) VALUES (?, ?, ?)", rows)

    def events_after(self, task_id: str, after: int, limit: int) -> list[bytes]:
        """Stored event JSON with ``seq > after``, in order, at most ``limit``."""
        rows = self._db.execute(
            "SELECT json FROM events WHERE task_id = ? AND seq > ? ORDER BY seq LIMIT ?",
            (task_id, after, limit),
        )
        return [bytes(r[0]) for r in rows]

    def events_total(self) -> int:
        """Events stored (the sum of every task's ``last_seq``: no table scan)."""
        return int(self._db.execute("SELECT COALESCE(SUM(last_seq), 0) FROM tasks").fetchone()[0])
