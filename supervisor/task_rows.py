"""The ``tasks`` table of the store (``supervisor.store``): a ``TaskRecord`` as a row and back.

``tasks`` mirrors ``protocol.tasks.TaskRecord`` column for column (dicts as JSON text), plus
``ord``, the task's place in submission order, with one index per listing filter. Functions and
statements over the store's connection, inside its open transaction (the store begins and
commits).
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections import Counter
from typing import Any

import orjson

from protocol.tasks import FINAL_STATUSES, TaskRecord
from supervisor.event_runs import SEQ_BITS

_FIELDS: tuple[dataclasses.Field[Any], ...] = dataclasses.fields(TaskRecord)
NAMES: tuple[str, ...] = tuple(f.name for f in _FIELDS)
#: Fields stored as JSON text (dicts and optional dicts).
_JSON: frozenset[str] = frozenset(f.name for f in _FIELDS if "dict" in str(f.type))
_BOOL: frozenset[str] = frozenset(f.name for f in _FIELDS if "bool" in str(f.type))
#: Row positions ``Store.update_progress`` writes: all but the key and the indexed columns.
_INDEXED = ("task_id", "task_type", "status")
PROGRESS_COLUMNS: tuple[int, ...] = tuple(i for i, n in enumerate(NAMES) if n not in _INDEXED)
PROGRESS_SQL = f"UPDATE tasks SET {', '.join(NAMES[i] + ' = ?' for i in PROGRESS_COLUMNS)} WHERE task_id = ?"
#: A new task: ``to_row(task)``, then its ``ord``.
INSERT_SQL = f"INSERT INTO tasks ({', '.join(NAMES)}, ord) VALUES ({', '.join('?' for _ in NAMES)}, ?)"
#: A whole row: ``to_row(task)[1:]``, then its ``task_id``.
UPDATE_SQL = f"UPDATE tasks SET {', '.join(n + ' = ?' for n in NAMES if n != 'task_id')} WHERE task_id = ?"

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS tasks (
    {", ".join(n + (" TEXT PRIMARY KEY" if n == "task_id" else "") for n in NAMES)},
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
"""


def to_row(task: TaskRecord) -> list[Any]:
    """The task's column values, in ``NAMES`` order."""
    row: list[Any] = []
    for name in NAMES:
        value = getattr(task, name)
        if name in _JSON and value is not None:
            value = orjson.dumps(value).decode()
        row.append(value)
    return row


def from_row(row: sqlite3.Row) -> TaskRecord:
    values: dict[str, Any] = {}
    for name in NAMES:
        value = row[name]
        if name in _JSON and value is not None:
            value = orjson.loads(value)
        elif name in _BOOL and value is not None:
            value = bool(value)
        values[name] = value
    return TaskRecord(**values)


def counters(db: sqlite3.Connection, task_id: str | None = None) -> list[tuple[str, int, int, int]]:
    """``(task_id, last_seq, last_rseq, behind)`` as stored, of ``task_id`` or else of every task
    not yet final: its row's counters plus the events stored past them (``behind`` of them).
    Past the row's ``last_seq`` every stored event is a runner's plain log line
    (``Store.note_events``), one ``seq`` and one ``rseq`` each; the last one's ``seq`` is its
    run's ``last`` (``supervisor.event_runs``)."""
    where, args = (
        ("task_id = ?", [task_id]) if task_id is not None else ("status NOT IN (?, ?, ?)", sorted(FINAL_STATUSES))
    )
    rows = db.execute(
        f"""SELECT task_id, last_seq, last_rseq,
                   (SELECT last FROM events WHERE id > ord << {SEQ_BITS} AND id < (ord + 1) << {SEQ_BITS}
                    ORDER BY id DESC LIMIT 1)
            FROM tasks WHERE {where}""",
        args,
    )
    out = []
    for found, last_seq, last_rseq, last in rows:
        behind = max(0, last - last_seq) if last is not None else 0
        out.append((found, last_seq + behind, last_rseq + behind, behind))
    return out


def tallies(db: sqlite3.Connection) -> tuple[Counter[tuple[str, str]], dict[str, tuple[str, str, int]], int]:
    """As stored: the tasks counted by ``(task_type, status)``, ``(task_type, status, ord)`` of
    every task not yet final, and the last ``ord`` given (``Store`` keeps them in memory)."""
    counts = Counter(
        {(r[0], r[1]): r[2] for r in db.execute("SELECT task_type, status, COUNT(*) FROM tasks GROUP BY 1, 2")}
    )
    open_ = {
        r[0]: (r[1], r[2], r[3])
        for r in db.execute(
            "SELECT task_id, task_type, status, ord FROM tasks WHERE status NOT IN (?, ?, ?)", sorted(FINAL_STATUSES)
        )
    }
    return counts, open_, int(db.execute("SELECT COALESCE(MAX(ord), 0) FROM tasks").fetchone()[0])
