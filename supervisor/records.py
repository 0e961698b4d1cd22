"""Task records for web's read view: published after every commit, a snapshot on request.

``Records.committed`` is the store's ``on_commit``: each commit's changed tasks go out on events-out
as one ``protocol.records`` message, numbered by ``rev`` (one per change, gap-free within this
daemon's ``epoch``). The store commits before it calls, so a record is published only once it is
stored; control replies are stamped with ``position()`` after their command ran, so a reader whose
view reached that position sees the command's changes. ``heartbeat`` sends the position on its
own every ``HEARTBEAT_SECONDS``: a receiver that lost the last change notices within one.

``snapshot`` is the ``view`` command's answer: the newest ``limit`` tasks and the tasks not yet
final, as far as ``SNAPSHOT_BYTES`` allows, with the position they are current at.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import orjson

from protocol.records import RECORDS_TOPIC, record_fields
from protocol.replies import Position
from protocol.tasks import TaskRecord
from supervisor.store import Changes, Store

#: Most bytes of records in one snapshot (a reply must stay under
#: ``protocol.codec.MAX_MESSAGE_BYTES``).
SNAPSHOT_BYTES = 3 * 1024 * 1024

#: Publish ``[(topic, payload)]`` on events-out.
Publish = Callable[[list[tuple[bytes, bytes]]], None]


class Records:
    """The record changes of one daemon's life (``epoch``), published as they are committed."""

    def __init__(self) -> None:
        self.epoch = uuid.uuid4().hex
        self.rev = 0
        self._store: Store | None = None
        self._publish: Publish | None = None
        #: Live (in-memory) records by id: a running task's record as the daemon holds it.
        self._live: Callable[[str], TaskRecord | None] = lambda _: None

    def attach(self, store: Store, publish: Publish, live: Callable[[str], TaskRecord | None]) -> None:
        """Publish ``store``'s commits through ``publish`` from now on."""
        self._store, self._publish, self._live = store, publish, live
        store.on_commit = self.committed

    def position(self) -> Position:
        return (self.epoch, self.rev)

    def committed(self, changes: Changes) -> None:
        records = [
            {"task_id": task_id, "deleted": True} if task is None else record_fields(task, ord_)
            for task_id, task, ord_ in changes
        ]
        self.rev += len(records)
        self._send(records)

    def heartbeat(self) -> None:
        self._send([])

    def _send(self, records: list[dict[str, Any]]) -> None:
        if self._publish is None or self._store is None:
            return
        message = {"epoch": self.epoch, "rev": self.rev, "records": records, "counts": self._store.counts()}
        self._publish([(RECORDS_TOPIC, orjson.dumps(message))])

    def snapshot(self, limit: int) -> dict[str, Any]:
        """The newest ``limit`` tasks, then the tasks not yet final below them, within
        ``SNAPSHOT_BYTES``; ``floor``: every task with ``ord`` at or above it is included (0:
        every task is)."""
        store = self._store
        assert store is not None
        rows = store.list_tasks(limit=limit + 1)
        records: dict[str, orjson.Fragment] = {}
        size = 0
        floor = 0
        for n, (ord_, stored) in enumerate(rows):
            encoded = orjson.dumps(record_fields(self._live(stored.task_id) or stored, ord_))
            if n == limit or size + len(encoded) > SNAPSHOT_BYTES:
                floor = ord_ + 1  # this one and older ones are not all here
                break
            records[stored.task_id] = orjson.Fragment(encoded)
            size += len(encoded)
        # Tasks not yet final below the window, as far as they fit (a read of another one asks).
        for task_id in store.open_ids():
            if task_id in records:
                continue
            task = self._live(task_id) or store.get_task(task_id)
            if task is None:
                continue
            encoded = orjson.dumps(record_fields(task, store.ord_of(task_id)))
            if size + len(encoded) > SNAPSHOT_BYTES:
                break
            records[task_id] = orjson.Fragment(encoded)
            size += len(encoded)
        return {
            "epoch": self.epoch,
            "rev": self.rev,
            "floor": floor,
            "records": list(records.values()),
            "counts": store.counts(),
        }

    def record(self, task: TaskRecord) -> dict[str, Any]:
        """One task's published form (a read view's miss)."""
        assert self._store is not None
        return record_fields(task, self._store.ord_of(task.task_id))
