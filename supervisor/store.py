"""The SQLite store: tasks and their events, in one file in WAL mode.

``tasks`` mirrors ``protocol.tasks.TaskRecord`` column for column (``supervisor.task_rows``; the
``token`` in ``params`` is kept for the runner and never leaves through ``TaskRecord.response``).
``events`` holds every stored event as its JSON bytes, a batch's run of a task's events one row
under ``ord << 32 | seq`` of its first (``supervisor.event_runs``); a long run's bytes are in
the task's event file instead, in the directory beside the database named after it with
``-events`` (``supervisor.event_files``, which says how a crash leaves them).

WAL with ``synchronous=NORMAL``: a commit is durable against a crash of this process (the
daemon's ``kill -9`` case) and needs no fsync; only a power loss may lose the last commits.
Events are written in batches (``append_events`` + ``commit``) — one transaction per batch is
what makes tens of thousands of events per second possible. A running task's plain log lines
are counted, not written into its row (``note_events``): its row's ``last_seq`` and
``last_rseq`` may lag its events until its next other change, and opening the store catches
them up (``stored_counters`` has them meanwhile).

A write the disk refuses ends the transaction whole (SQLite's own rollback, or ``rollback``):
nothing of it is reported or published (``on_rollback`` undoes what depended on it), a
``batch`` it was part of fails (``TransactionLost``), and the next write begins anew.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

from protocol.tasks import FINAL_STATUSES, TaskRecord
from supervisor import event_runs, task_rows
from supervisor.event_files import EventFiles
from supervisor.event_runs import Row
from supervisor.wal import WAL_SIZE_LIMIT, Checkpointer, sync_files

log = logging.getLogger(__name__)


class TransactionLost(sqlite3.OperationalError):
    """A commit found its transaction rolled back (a write refused): nothing since the last is stored."""


_SCHEMA = task_rows.SCHEMA + event_runs.SCHEMA
# 16 KiB pages (only effective when the file is created): events of about 1 KiB in bursts cost
# less to insert and checkpoint than with 4 KiB pages (measured with a row per event: 5-7
# against 6-9 µs, and 1.3 against 2.5-3 µs of checkpoint CPU). A submit writes more with them
# (about ten pages: 137 instead of 41 KiB), which the group commit of control requests shares
# (measured under benchmarks.http: 60 µs more supervisor CPU per POST, the same p99).


#: What a commit changed, in order: ``(task_id, record or None when deleted, ord)``.
Changes = list[tuple[str, TaskRecord | None, int]]


class Store:
    """One SQLite connection, used from the daemon's event-loop thread only."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        # No automatic checkpoint inside a commit: copying the WAL back into the database
        # stalled the event loop for tens of milliseconds (p99 latency); ``checkpoint`` runs
        # on its own connection in a worker thread instead (the daemon calls it).
        pragmas = ("page_size=16384", "journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=5000")
        for pragma in (*pragmas, "wal_autocheckpoint=0", f"journal_size_limit={WAL_SIZE_LIMIT}"):
            self._db.execute(f"PRAGMA {pragma}")
        self._db.executescript(_SCHEMA)
        event_runs.migrate(self._db)
        self._files = EventFiles(path.with_name(path.name + "-events"), partial(event_runs.file_end, self._db))
        if any(self._files.directory.iterdir()):
            if swept := self._files.sweep(int(r[0]) for r in self._db.execute("SELECT ord FROM tasks")):
                log.info("%d event file(s) of deleted tasks removed", swept)
        # Task counts by (type, status), kept in memory from one count at open: totals cost the
        # same for ten tasks or a million, and a write pays a dict update (SQLite triggers
        # keeping a counts table tripled the cost of every insert and update: 92 -> 343 us).
        #: ``_open``: (type, status, ord) of every task not yet final: the status an update leaves.
        self._counts, self._open, self._ord = task_rows.tallies(self._db)
        #: Called after each commit with the tasks it changed (``supervisor.records``
        #: publishes them: stored before published).
        self.on_commit: Callable[[Changes], None] | None = None
        self._changed: dict[str, tuple[TaskRecord | None, int]] = {}
        #: Open ``batch`` blocks, and what runs after the commit that ends the outermost one.
        self._batch = 0
        self._batch_lost = False  # (the open ``batch`` lost writes: its end must fail)
        self._after: list[Callable[[], None]] = []
        #: What undoes, in memory, what the open transaction holds (``on_rollback``).
        self._undo: list[Callable[[], None]] = []
        self._checkpointer = Checkpointer(path, self._files)
        self._in_tx = False
        #: Open tasks whose row lags their events (``note_events``): the live records.
        self._behind: dict[str, TaskRecord] = {}
        self._catch_up_counters()

    # -- transactions ------------------------------------------------------------------
    def _begin(self) -> None:
        self._lost()
        if not self._in_tx:
            self._db.execute("BEGIN")
            self._in_tx = True

    def _lost(self) -> bool:
        """Whether SQLite rolled the open transaction back by itself (a write it refused): then
        it is rolled back here too (else: autocommit, and every commit after would fail)."""
        if not self._in_tx or self._db.in_transaction:
            return False
        log.error("a store transaction was rolled back by SQLite (a write refused); nothing of it is stored")
        self.rollback()
        return True

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """One transaction for every write inside: the commits asked for inside wait for the end
        of the outermost block (a submit stores its tasks and their first events at once)."""
        self._batch += 1
        try:
            yield
        finally:
            self._batch -= 1
            if self._batch == 0:
                self.commit()

    def commit(self, after: Callable[[], None] | None = None) -> None:
        """Commit everything written since the last commit (no-op when nothing was), report the
        changed tasks (``on_commit``), then run ``after`` (e.g. publish what was stored). Inside
        a ``batch`` all of it waits for the batch's end."""
        if not (lost := self._lost()) and after is not None:  # (else it follows writes gone)
            self._after.append(after)
        if self._batch:
            return
        if lost or self._batch_lost:
            if not lost:
                self.rollback()  # (what a batch wrote after the loss goes with it)
            self._batch_lost = False
            raise TransactionLost("the store's transaction was rolled back (a write refused); nothing of it is stored")
        if self._in_tx:
            try:
                self._db.execute("COMMIT")
            except sqlite3.Error:  # (refused: whole, as a write that fails)
                self.rollback()
                raise
            self._in_tx = False
        self._undo.clear()
        if self._changed:
            changed, self._changed = self._changed, {}
            if self.on_commit is not None:
                self.on_commit([(task_id, task, ord_) for task_id, (task, ord_) in changed.items()])
        if self._after:
            afters, self._after = self._after, []
            for callback in afters:
                callback()

    def rollback(self) -> None:
        """Drop what was written since the last commit, what was to follow its commit (reports,
        ``after``), run its ``on_rollback`` undos; a ``batch`` then fails at its end. Idempotent."""
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")
        self._in_tx = False
        self._changed.clear()
        self._after.clear()
        self._batch_lost = self._batch_lost or self._batch > 0
        self._counts, self._open, self._ord = task_rows.tallies(self._db)  # (as the writes are gone)
        undo, self._undo = self._undo, []
        for callback in reversed(undo):
            callback()

    def on_rollback(self, undo: Callable[[], None]) -> None:
        """Run ``undo`` (what was done in memory on the strength of the open transaction's or
        ``batch``'s writes: a task queued) if they are rolled back, not committed."""
        self._undo.append(undo)

    def checkpoint(self) -> bool:
        return self._checkpointer.run()  # (from a worker thread: ``supervisor.wal.Checkpointer``)

    def finish_checkpoint(self) -> None:
        """Checkpoint, on the writer's connection (on the loop), the frames a ``checkpoint`` pass
        left: the next write starts the WAL over. It copies and syncs what was committed during
        that pass (milliseconds), and the first commit after it syncs the new WAL header: once
        per ``WAL_RESTART_BYTES``. Skipped inside a transaction (the next checkpoint asks again)."""
        if not self._in_tx:
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def close(self) -> None:
        self.commit()
        if self._behind:
            # Rows that lag their events (``note_events``) are written: a store closed in order
            # needs no catching up. Reported to no one (their records went out with their commits).
            self.on_commit = None
            for task in list(self._behind.values()):
                self.update_task(task, commit=False)
            self.commit()
        self._checkpointer.close()
        sync_files(self._files)  # before the rows that point into them reach the database file
        self._files.close()
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._db.close()

    # -- tasks ---------------------------------------------------------------------------
    def insert_tasks(self, tasks: Iterable[TaskRecord]) -> None:
        """Insert new tasks, all or none. Raises ``sqlite3.IntegrityError`` when an id exists,
        having undone only its own inserts (a savepoint: what else the open transaction holds,
        e.g. other requests of a group commit, stays)."""
        self._begin()
        added = list(tasks)
        self._db.execute("SAVEPOINT insert_tasks")
        inserted = 0
        try:
            for task in added:
                self._db.execute(task_rows.INSERT_SQL, [*task_rows.to_row(task), self._ord + inserted + 1])
                inserted += 1
        except sqlite3.IntegrityError:
            self._db.execute("ROLLBACK TO insert_tasks")
            self._db.execute("RELEASE insert_tasks")
            raise
        except sqlite3.Error:
            self.rollback()
            raise
        self._db.execute("RELEASE insert_tasks")
        for task in added:
            self._ord += 1
            self._changed[task.task_id] = (task, self._ord)
            self._counted(task.task_id, task.task_type, task.status, self._ord)
        self.commit()

    def update_task(self, task: TaskRecord, *, commit: bool = True) -> None:
        """Store ``task``'s row. While its type and status are as stored, only the columns no
        index holds are written (``update_progress``): the commit rewrites the row's page, not
        also three index pages."""
        old = self._open.get(task.task_id)
        if old is not None and old[0] == task.task_type and old[1] == task.status:
            self.update_progress(task)
            if commit:
                self.commit()
            return
        self._begin()
        row = task_rows.to_row(task)
        self._db.execute(task_rows.UPDATE_SQL, [*row[1:], row[0]])
        self._behind.pop(task.task_id, None)
        ord_ = old[2] if old is not None else self.ord_of(task.task_id)
        if old is not None and old[1] != task.status:
            self._counts[old[:2]] -= 1
            self._counted(task.task_id, task.task_type, task.status, ord_)
        self._changed[task.task_id] = (task, ord_)
        if commit:
            self.commit()

    def _counted(self, task_id: str, task_type: str, status: str, ord_: int) -> None:
        self._counts[(task_type, status)] += 1
        if status in FINAL_STATUSES:
            self._open.pop(task_id, None)
        else:
            self._open[task_id] = (task_type, status, ord_)

    def ord_of(self, task_id: str) -> int:
        """The task's place in submission order (0: no such task)."""
        known = self._open.get(task_id)
        if known is not None:
            return known[2]
        row = self._db.execute("SELECT ord FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        return int(row[0]) if row is not None else 0

    def open_ids(self) -> list[str]:
        """Ids of the tasks not yet final."""
        return list(self._open)

    def get_task(self, task_id: str) -> TaskRecord | None:
        row = self._db.execute("SELECT * FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        return task_rows.from_row(row) if row is not None else None

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
        return [(int(r["ord"]), task_rows.from_row(r)) for r in self._db.execute(sql, args)]

    def tasks_in_order(self, status: str) -> list[TaskRecord]:
        """Tasks with ``status`` in submission order (recovery re-queues pending ones so)."""
        rows = self._db.execute("SELECT * FROM tasks WHERE status = ? ORDER BY ord", (status,))
        return [task_rows.from_row(r) for r in rows]

    def counts(self) -> dict[str, dict[str, int]]:
        """``{task_type: {status: n}}`` (kept in memory: no scan)."""
        out: dict[str, dict[str, int]] = {}
        for (task_type, status), n in self._counts.items():
            if n > 0:
                out.setdefault(task_type, {})[status] = n
        return out

    def delete_task(self, task_id: str) -> None:
        """Remove a finished task and its events."""
        row = self._db.execute("SELECT task_type, status, ord FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        self._begin()
        if row is not None and row[1] in FINAL_STATUSES:
            event_runs.delete(self._db, row[2])
        gone = self._db.execute(
            "DELETE FROM tasks WHERE task_id = ? AND status IN (?, ?, ?)", (task_id, *sorted(FINAL_STATUSES))
        ).rowcount
        if gone and row is not None:
            self._counts[(row[0], row[1])] -= 1
            self._changed[task_id] = (None, 0)
            self.commit(after=partial(self._files.remove, row[2]))  # once its rows are gone
        else:
            self.commit()

    # -- events --------------------------------------------------------------------------
    def append_events(self, rows: list[Row]) -> list[tuple[str, bytes]]:
        """Queue ``(task_id, first seq, last seq, json)`` rows (``event_runs.Row``) in the open
        transaction; ``commit`` ends it. Each run of consecutive events of one task is stored as
        one row: returns them as stored, ``(task_id, packed events)`` in order (what
        ``supervisor.events_out`` publishes)."""
        self._begin()
        return event_runs.insert(self._db, self._files, rows, self.ord_of)

    def update_progress(self, task: TaskRecord) -> None:
        """``update_task(task, commit=False)`` for what a batch of events changes in a task
        whose type and status are as stored (progress, message, metrics, counters): the row
        without its indexed columns, so the commit rewrites the row's page only, not also the
        three index pages that a full update rewrites (measured: a one-event batch's commit
        writes 53 instead of 102 KB to the WAL and takes half the time). Anything else (a status
        not stored yet): ``update_task``."""
        old = self._open.get(task.task_id)
        if old is None or old[0] != task.task_type or old[1] != task.status:
            self.update_task(task, commit=False)
            return
        self._begin()
        row = task_rows.to_row(task)
        self._db.execute(task_rows.PROGRESS_SQL, [*(row[i] for i in task_rows.PROGRESS_COLUMNS), task.task_id])
        self._behind.pop(task.task_id, None)
        self._changed[task.task_id] = (task, old[2])

    def note_events(self, task: TaskRecord) -> None:
        """Instead of ``update_progress``, for a task whose events in the open transaction are
        runner lines that changed nothing else of it (its plain log lines: ``seq`` and ``rseq``
        each one up per event, and ``updated_at``): its row is not written, and the commit
        reports it as changed all the same (``on_commit``). A lone event's commit then writes its
        event's page alone, not also its task's: 18.7 instead of 34.7 KiB to the WAL, and 56-76
        instead of 119-126 µs of CPU for ``Pipeline.ingest`` of one event. The row lags until
        the task's next other change; what is stored of it is then its row's counters plus the
        events stored after them (``stored_counters``), which opening the store writes back
        (``_catch_up_counters``)."""
        old = self._open.get(task.task_id)
        if old is None or old[0] != task.task_type or old[1] != task.status:
            self.update_task(task, commit=False)
            return
        self._begin()
        self._behind[task.task_id] = task
        self._changed[task.task_id] = (task, old[2])

    def stored_counters(self, task_id: str) -> tuple[int, int] | None:
        """``(last_seq, last_rseq)`` of what is stored of the task (None: no such task): its
        row's, and past them the events stored since its row was last written
        (``note_events``, ``task_rows.counters``)."""
        found = task_rows.counters(self._db, task_id)
        return (found[0][1], found[0][2]) if found else None

    def _catch_up_counters(self) -> None:
        """Write into the rows of the open tasks the events stored past them (rows lag while only
        plain log lines arrive, ``note_events``, and a daemon killed meanwhile leaves them so):
        every reader of a row, recovery first, then finds its task's counters as stored."""
        caught = [(seq, rseq, task_id) for task_id, seq, rseq, behind in task_rows.counters(self._db) if behind]
        if caught:
            self._begin()
            self._db.executemany("UPDATE tasks SET last_seq = ?, last_rseq = ? WHERE task_id = ?", caught)
            self.commit()
            log.info("event counters of %d task(s) caught up with their stored events", len(caught))

    def events_after(self, task_id: str, after: int, limit: int) -> list[bytes]:
        """Stored event JSON with ``seq > after``, in order, at most ``limit``."""
        return event_runs.after(self._db, self._files, self.ord_of(task_id), after, limit)

    def events_total(self) -> int:
        """Events stored (the sum of every task's ``last_seq``: no table scan)."""
        total = int(self._db.execute("SELECT COALESCE(SUM(last_seq), 0) FROM tasks").fetchone()[0])
        for task_id in self._behind:  # rows that lag their events (``note_events``)
            total += sum(found[3] for found in task_rows.counters(self._db, task_id))
        return total
