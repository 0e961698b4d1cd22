"""Task records published for web's read view (``web.view``): the wire form, shared by both ends.

The supervisor stays the only writer. Whenever the store commits changed tasks it publishes their
records on events-out under ``RECORDS_TOPIC`` (``supervisor.records``), after the commit (stored
before published), so web can answer status reads and task lists without a round trip.

One message is ``{"epoch": E, "rev": R, "records": [...], "counts": {...}}``:

- ``epoch``: the supervisor's boot id. A new epoch (a restarted supervisor) means "take a fresh
  snapshot".
- ``rev``: a counter of record changes within the epoch; the message's records are changes
  ``R - len(records) + 1 .. R``, in order. A heartbeat is a message with no records. Every
  change is published, so a receiver that sees a ``rev`` jump has missed one and resynchronises.
- ``records``: ``record_fields`` of each changed task (``ord`` is its place in submission order),
  or ``{"task_id": id, "deleted": true}``.
- ``counts``: ``{task_type: {status: n}}`` over every stored task, after the change.

Control replies carry the position they were answered at (``protocol.replies``: ``"at": [E, R]``):
a reader whose view has reached that position sees everything that request did.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from protocol.tasks import TASK_TYPES, TaskRecord, public_params

#: The events-out topic of task records (not a task id: it starts with a NUL).
RECORDS_TOPIC = b"\x00tasks"
#: Seconds between heartbeats (a tail change that was lost shows within one).
HEARTBEAT_SECONDS = 1.0

_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(TaskRecord))
#: Fields a reader never needs (the runner's cgroup path, its start time, the runner's own count).
_PRIVATE: frozenset[str] = frozenset({"cgroup", "pid_started", "last_rseq"})


def record_fields(task: TaskRecord, ord_: int) -> dict[str, Any]:
    """The published form of ``task``: every field a ``TaskResponse`` is made of (secrets out of
    ``params``) and its ``ord``."""
    out: dict[str, Any] = {name: getattr(task, name) for name in _NAMES if name not in _PRIVATE}
    out["params"] = public_params(task.params)
    out["ord"] = ord_
    return out


def from_fields(fields: dict[str, Any]) -> tuple[int, TaskRecord]:
    """``(ord, record)`` from ``record_fields``' output; ``ValueError`` when it is malformed."""
    values = {name: fields[name] for name in _NAMES if name in fields}
    try:
        ord_ = int(fields["ord"])
        return ord_, TaskRecord(**values)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"malformed task record: {exc}") from None


def totals(counts: dict[str, dict[str, int]], task_type: str | None, status: str | None) -> dict[str, int]:
    """A task list's ``totals``: every task type, the tasks of each that match the filters."""
    out = {t: 0 for t in TASK_TYPES}
    for kind, by_status in counts.items():
        if task_type is None or kind == task_type:
            out[kind] = sum(n for s, n in by_status.items() if status is None or s == status)
    return out
