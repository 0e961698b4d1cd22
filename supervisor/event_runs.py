"""The ``events`` table of the store (``supervisor.store``): runs of events under one integer key.

One row per run of consecutive events of a task stored together (a batch's), packed one per line
(``protocol.events.pack``: the bytes ``supervisor.events_out`` publishes; a line of a runner's
plain run without a ``seq`` of its own is the one after the line before it, and is given its
``seq`` when read: ``protocol.events.numbered``), under ``ord << 32 |
seq`` of the run's first event (``event_key``): the task's place in submission order, then the
event's number. A task's events are one range of keys; the key is the rowid, so no index is
written beside the rows, and a batch of a task is one insert.

Measured with 1 KiB events in batches of 250: 1.5-1.9 µs an event to insert and commit, against
5.4-6.3 µs with a row each (and 6.2-6.6 with the rowid table and ``(task_id, seq)`` index of
stores made before, which ``migrate`` converts when the store is opened). A lone event's commit
writes 35 instead of 52 KiB to the WAL, and 19 since its task's row is not rewritten for a plain
log line (``supervisor.store.Store.note_events``): each row keeps its run's last ``seq``
(``last``), which ``supervisor.task_rows.counters`` reads.

A run longer than ``INLINE_BYTES`` is kept in its task's event file instead
(``supervisor.event_files``), its row holding where (``at``, ``size``) and no bytes (``json``
empty): a burst's runs are written once, not through the WAL and again by its checkpoint.

Functions over the store's connection, inside its open transaction (the store begins and
commits).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable

import orjson

from protocol import events as ev
from supervisor.event_files import EventFiles

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    json BLOB NOT NULL,
    at INTEGER,
    size INTEGER,
    last INTEGER
);
"""
#: Runs of at most this many bytes are stored in their row; longer ones in their task's event
#: file. Measured with 1 KiB events, writer and checkpoint CPU an event, row against file: one
#: event 60 against 64 µs, two 32 against 26, eight 10.0 against 9.0, two hundred 2.7 against 0.7.
INLINE_BYTES = 2048
#: Bits of an event's key that hold its ``seq`` (``event_key``); the task's ``ord`` is above.
SEQ_BITS = 32
_SEQ_MASK = (1 << SEQ_BITS) - 1


def event_key(ord_: int, seq: int) -> int:
    """An event's key in ``events``: its task's ``ord``, then its ``seq``."""
    return ord_ << SEQ_BITS | seq


#: ``(task_id, seq of the first event, seq of the last, json)``: one event, or a run of
#: consecutive ones packed, the first numbered (``protocol.events.numbered``).
Row = tuple[str, int, int, bytes]


def insert(
    db: sqlite3.Connection, files: EventFiles, rows: list[Row], ord_of: Callable[[str], int]
) -> list[tuple[str, bytes]]:
    """Store ``rows``, each run of consecutive events of one task as one row (a long one's bytes
    in its task's event file, and a long row a run of its own: ``INLINE_BYTES``); returns the runs as stored, ``(task_id, packed
    events)`` in order. ``ord_of``: a task's place in submission order (0: no such task, whose
    events are not stored). Raises ``OSError`` where an event file cannot be written."""
    runs: list[tuple[int, bytes, int | None, int | None, int]] = []
    out: list[tuple[str, bytes]] = []
    ords: dict[str, int] = {}
    i, n = 0, len(rows)
    while i < n:
        task_id, first, seq, data = rows[i]
        j = i + 1
        # A long row (a runner's run) is a run of its own: stored and published without a copy.
        if len(data) <= INLINE_BYTES:
            while j < n and rows[j][1] == seq + 1 and rows[j][0] == task_id and len(rows[j][3]) <= INLINE_BYTES:
                seq = rows[j][2]
                j += 1
        ord_ = ords.get(task_id)
        if ord_ is None:
            ord_ = ords[task_id] = ord_of(task_id)
        if not ord_:  # (the pipeline stores events of stored tasks only)
            log.error("events %d..%d of task %r not stored: no such task", first, seq, task_id[:64])
            i = j
            continue
        run = data if j == i + 1 else ev.pack([r[3] for r in rows[i:j]])
        key = ord_ << SEQ_BITS | first
        if len(run) > INLINE_BYTES:
            runs.append((key, b"", files.append(ord_, run), len(run), seq))
        else:
            runs.append((key, run, None, None, seq))
        out.append((task_id, run))
        i = j
    db.executemany("INSERT INTO events (id, json, at, size, last) VALUES (?, ?, ?, ?, ?)", runs)
    return out


def after(db: sqlite3.Connection, files: EventFiles, ord_: int, seq: int, limit: int) -> list[bytes]:
    """The JSON of task ``ord_``'s events numbered above ``seq``, in order, at most ``limit``
    (a run of its event file that a power loss took is left out: ``EventFiles.read``)."""
    want = max(0, seq) + 1
    if not ord_ or limit <= 0 or want > _SEQ_MASK:
        return []
    # The run holding event ``want`` starts at or before it; the ones after it follow.
    row = db.execute(
        "SELECT id FROM events WHERE id > ? AND id <= ? ORDER BY id DESC LIMIT 1",
        (event_key(ord_, 0), event_key(ord_, want)),
    ).fetchone()
    start = row[0] if row is not None else event_key(ord_, want)
    out: list[bytes] = []
    for key, data, at, size in db.execute(
        "SELECT id, json, at, size FROM events WHERE id >= ? AND id < ? ORDER BY id", (start, event_key(ord_ + 1, 0))
    ):
        if size is not None:
            data = files.read(ord_, at, size, key & _SEQ_MASK)
            if data is None:
                continue
        run = ev.numbered(bytes(data).split(b"\n"), stored=True)
        skip = want - (key & _SEQ_MASK)
        out.extend(run[skip:] if skip > 0 else run)
        if len(out) >= limit:
            del out[limit:]
            break
    return out


def delete(db: sqlite3.Connection, ord_: int) -> None:
    """Remove every event of task ``ord_`` (its event file: ``EventFiles.remove``, once this
    is committed)."""
    db.execute("DELETE FROM events WHERE id >= ? AND id < ?", (event_key(ord_, 0), event_key(ord_ + 1, 0)))


def file_end(db: sqlite3.Connection, ord_: int) -> int:
    """Where the last run stored in task ``ord_``'s event file ends, its newline included (0:
    none). Runs go into the file in order, so it is the last such row's."""
    row = db.execute(
        "SELECT at + size + 1 FROM events WHERE id > ? AND id < ? AND size IS NOT NULL ORDER BY id DESC LIMIT 1",
        (event_key(ord_, 0), event_key(ord_ + 1, 0)),
    ).fetchone()
    return int(row[0]) if row is not None else 0


def migrate(db: sqlite3.Connection) -> None:
    """Bring the ``events`` table of a store made by an earlier version to this layout, each
    step in one transaction (a crash halfway leaves the step to do at the next open): re-key a
    store of the ``(task_id, seq)`` layout, each event a run of one; then give rows a place in
    an event file (``at``, ``size``: none for the rows already stored, which hold their bytes)."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(events)")}
    if "task_id" in columns:
        _rekey(db)
    if "size" not in columns:
        db.execute("BEGIN IMMEDIATE")
        db.execute("ALTER TABLE events ADD COLUMN at INTEGER")
        db.execute("ALTER TABLE events ADD COLUMN size INTEGER")
        db.execute("COMMIT")
    if "last" not in columns:
        db.execute("ALTER TABLE events ADD COLUMN last INTEGER")  # (one statement: its own transaction)


def _rekey(db: sqlite3.Connection) -> None:
    """Re-key the ``(task_id, seq)`` layout's events by ``(ord, seq)``."""
    started = time.monotonic()
    db.execute("BEGIN IMMEDIATE")
    try:
        # Every task has its own ord (inserts always gave one; a row without would share 0).
        renumbered = db.execute("UPDATE tasks SET ord = (SELECT MAX(ord) FROM tasks) + rowid WHERE ord = 0").rowcount
        db.execute("CREATE TABLE events_keyed (id INTEGER PRIMARY KEY, json BLOB NOT NULL)")
        total = int(db.execute("SELECT COUNT(*) FROM events").fetchone()[0])
        moved = db.execute(
            f"INSERT INTO events_keyed (id, json) SELECT t.ord << {SEQ_BITS} | e.seq, e.json"
            " FROM events e JOIN tasks t ON t.task_id = e.task_id ORDER BY 1"
        ).rowcount
        # A run is one event a line: an event stored with a newline between its tokens (valid
        # JSON, as a runner could once send it) is written compact.
        spread = db.execute("SELECT id, json FROM events_keyed WHERE instr(json, X'0A') > 0").fetchall()
        for key, data in spread:
            db.execute("UPDATE events_keyed SET json = ? WHERE id = ?", (orjson.dumps(orjson.loads(data)), key))
        db.execute("DROP TABLE events")
        db.execute("ALTER TABLE events_keyed RENAME TO events")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    log.info(
        "events re-keyed by (ord, seq) in %.1f s: %d moved, %d of no task dropped, %d rewritten on one line; "
        "%d task(s) without a place in submission order given one after the others",
        time.monotonic() - started, moved, total - moved, len(spread), renumbered,
    )  # fmt: skip
