"""The event pipeline: runner events in, stored and numbered events out.

For each runner event (``[task_id, json, json, …]`` messages from the events-in SUB): validate it
(``protocol.events.check_event``; a malformed one is logged and dropped), drop a duplicate
(``rseq`` already seen: it came through the journal first), fill a gap from the task's journal
(the runner journals before it sends, so the journal has every event), assign the task's
gap-free ``seq``, update the task (progress, epochs, metrics, result, message), store, publish.
Supervisor-side events (``emit``) take the same path with ``source: "supervisor"``; what the
disk refuses of them waits in memory until it is stored (``supervisor.backlog``).

A runner's run of plain log lines (``[task_id, packed, PLAIN]``, ``protocol.events.PLAIN``) that
starts where the task's events left off takes none of these steps per event: stored and published
as it came, its first line numbered (the others by their place when read). A batch is one
``executemany``, one commit, one burst of sends: that keeps up with tens of thousands of events a
second. Store first, then publish: a subscriber that sees ``seq`` N can always fetch 1..N.

A runner's final status event (``completed``/``failed``/``cancelled``) is numbered but held
back: the daemon applies the outcome when it reaps the runner (``final_status``), so a task is
never final while its process still holds a slot, and only then stores and publishes the held
event with the final task record (``release_final``): who sees it finds the task final.

Every task's stream ends with exactly one final status event (subscribers stop there). So a
``failed`` that a runner reports *after* its cancel was requested (``cancelling``) — a job torn
down mid-batch often fails on the way out, its DataLoader workers got the SIGTERM too — is
stored as an ERROR log line instead, kept as ``exit_report``, and the daemon ends the task
``cancelled`` (the contract knows no other end for a stopped task).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, cast

import orjson

from protocol import events as ev
from protocol.tasks import FAILED, FINAL_STATUSES, RUNNING, TaskRecord, now_iso
from supervisor.backlog import DISK_ERRORS, Backlog, Write
from supervisor.event_runs import Row
from supervisor.journal import Journal
from supervisor.store import Store

log = logging.getLogger(__name__)

_LEVELS = frozenset(ev.LEVELS)

#: Publish ``[(topic, json), ...]`` on the events-out socket (``json``: one or more events, packed).
Publish = Callable[[list[tuple[bytes, bytes]]], None]


class Pipeline:
    """Owns ``seq`` assignment for the live tasks in ``tasks`` (the daemon's dict)."""

    def __init__(self, store: Store, publish: Publish, tasks: dict[str, TaskRecord]) -> None:
        self._store = store
        self._publish = publish
        self._tasks = tasks
        self._journals: dict[str, Journal] = {}
        self._finals: dict[str, tuple[str, str]] = {}
        self._cancelling: set[str] = set()
        self._exit_reports: dict[str, str] = {}
        self._held: dict[str, Row] = {}
        #: The supervisor's own writes the disk refused, waiting to be stored; why the disk
        #: refused the last write ("" once one is stored again).
        self.backlog, self.refused = Backlog(), ""
        self.received = 0
        self.dropped = 0

    # -- per-task bookkeeping ------------------------------------------------------------
    def attach(self, task: TaskRecord) -> None:
        """Start following ``task``'s journal (when its runner is spawned or adopted)."""
        if task.task_dir:
            self._journals[task.task_id] = Journal(Path(task.task_dir) / "events.jsonl")

    def detach(self, task_id: str) -> None:
        self._journals.pop(task_id, None)
        self._finals.pop(task_id, None)
        self._cancelling.discard(task_id)
        self._exit_reports.pop(task_id, None)
        self._held.pop(task_id, None)

    def cancelling(self, task_id: str) -> None:
        """A cancel was requested: a ``failed`` reported from now on is not the task's end."""
        self._cancelling.add(task_id)

    def final_status(self, task_id: str) -> tuple[str, str] | None:
        """The runner's own final ``(status, message)``, if it reported one."""
        return self._finals.get(task_id)

    def exit_report(self, task_id: str) -> str | None:
        """The failure a runner reported while being cancelled, if any."""
        return self._exit_reports.get(task_id)

    # -- runner events -------------------------------------------------------------------
    def ingest(self, frames: list[list[bytes]]) -> int:
        """Process a batch of ``[task_id, json, json, ...]`` messages (a runner batches events
        into one message when it sends fast) and ``[task_id, packed, PLAIN]`` ones (a runner's
        plain log lines, packed); return how many events were stored."""
        if self.backlog:
            self.store_backlog()  # (first: what waits is older)
        rows: list[Row] = []
        dirty: dict[str, TaskRecord] = {}
        #: Tasks whose only events in this batch are their plain log lines, in order: nothing
        #: of them but their counters changed (``Store.note_events``).
        counted: dict[str, TaskRecord] = {}
        tasks = self._tasks
        loads = orjson.loads
        log_kind, levels, slow, prefix, plain = ev.LOG, _LEVELS, ev.READ_FIELDS, ev.RUNNER_PREFIX, ev.PLAIN
        for msg in frames:
            if len(msg) < 2:
                self.received += 1
                self._drop("message of %d frame(s) (expected [task_id, event, ...])", len(msg))
                continue
            topic = msg[0]
            # A run of plain log lines, as its runner's publisher packed and vouched for it
            # (``protocol.events.PLAIN``), or events one per frame.
            run = msg[1] if len(msg) == 3 and msg[2] == plain else None
            span = None if run is None else ev.run_rseqs(run)
            if run is None:
                count = len(msg) - 1
            elif span is None:  # (read event by event below)
                count = run.count(b"\n") + 1
            else:
                count = span[1] - span[0] + 1
            self.received += count
            task = tasks.get(topic.decode("utf-8", "replace"))
            if task is None or task.status != RUNNING:
                # Late duplicates after the reaper read the journal, or a stranger.
                self.dropped += count
                log.debug("events for a task that is not running (%r) dropped", topic[:64])
                continue
            task_id = task.task_id
            before = len(rows)
            rseq, seq = task.last_rseq, task.last_seq  # in locals while on the fast path
            payloads = msg[1:]
            if run is not None:
                # The task's next run (its first line's ``rseq``) is stored and published as it
                # came, its first line numbered (the others are by their place:
                # ``protocol.events.numbered``), none of its lines read. Else (a repeat after the
                # journal was read, a gap, a run that does not start as a runner's): event by
                # event, below.
                if span is not None and span[0] == rseq + 1:
                    last = seq + count
                    rows.append((task_id, seq + 1, last, b"".join((b'{"seq":%d,' % (seq + 1), memoryview(run)[1:]))))
                    task.last_rseq, task.last_seq = rseq + count, last
                    counted[task_id] = task
                    continue
                payloads = run.split(b"\n")
            for payload in payloads:
                try:
                    event = loads(payload)
                except ValueError as exc:
                    self._drop("malformed event from task %s: %s", task_id, exc)
                    continue
                # The fast path: the task's next plain log line, as its runner encoded it
                # (``rseq`` first), well-formed (what ``check_event`` asks of a log line without
                # the fields it checks further): numbered by prepending ``seq``
                # (``protocol.events.number``), nothing to apply. Anything else: ``_accept``.
                if (
                    type(event) is dict
                    and event.get("kind") == log_kind
                    and event.get("rseq") == rseq + 1
                    and type(event["rseq"]) is int
                    and event.get("level") in levels
                    and type(event.get("message")) is str
                    and type(event.get("timestamp")) is str
                    and slow.isdisjoint(event)
                    and event.get("task_id", task_id) == task_id
                    and payload.startswith(prefix)
                ):
                    rseq += 1
                    seq += 1
                    data = b'{"seq":%d,' % seq + payload[1:]
                    rows.append((task_id, seq, seq, data))
                    continue
                if type(event) is not dict:
                    self._drop("malformed event from task %s: expected an object", task_id)
                    continue
                task.last_rseq, task.last_seq = rseq, seq
                self._accept(task, cast(ev.Event, event), payload, rows, dirty)
                rseq, seq = task.last_rseq, task.last_seq
            task.last_rseq, task.last_seq = rseq, seq
            if len(rows) > before and task_id not in dirty:
                counted[task_id] = task  # (``_accept`` puts a task it changed in ``dirty``)
        self._flush(rows, dirty, progress=True, counted=counted)
        return sum(last - first + 1 for _, first, last, _ in rows)

    def catch_up(self, task: TaskRecord, limit: int | None = None) -> int:
        """Store journaled events not yet stored (reap, adoption, restart): all of them, or the
        next ``limit``. Returns how many journal lines it read (fewer than ``limit``: the end)."""
        journal = self._journals.get(task.task_id)
        if journal is None:
            return 0
        if self.backlog:
            self.store_backlog()
        rows: list[Row] = []
        dirty: dict[str, TaskRecord] = {}
        until = None if limit is None else task.last_rseq + 1 + limit
        lines = journal.read(task.last_rseq, until)
        for event, raw in lines:
            self._accept(task, cast(ev.Event, event), raw, rows, dirty, from_journal=True)
        self._flush(rows, dirty, progress=True)
        return len(lines)

    def _drop(self, fmt: str, *args: Any) -> None:
        self.dropped += 1
        log.warning("dropped: " + fmt, *args)

    def _accept(
        self,
        task: TaskRecord,
        event: ev.Event,
        raw: bytes,
        rows: list[Row],
        dirty: dict[str, TaskRecord],
        *,
        from_journal: bool = False,
    ) -> None:
        why = ev.check_event(event)
        if why is not None:
            self._drop("malformed event from task %s: %s", task.task_id, why)
            return
        if event.get("task_id", task.task_id) != task.task_id:
            self._drop("event on topic %s names task %r", task.task_id, event.get("task_id"))
            return
        rseq: int = event["rseq"]
        if rseq <= task.last_rseq:
            return  # already stored (through the journal)
        if rseq > task.last_rseq + 1 and not from_journal:
            journal = self._journals.get(task.task_id)
            missing = journal.read(task.last_rseq, rseq) if journal is not None else []
            for old, old_raw in missing:
                self._accept(task, cast(ev.Event, old), old_raw, rows, dirty, from_journal=True)
            if rseq > task.last_rseq + 1:
                lost = f"{task.last_rseq + 1}..{rseq - 1}"
                log.error("task %s: runner events %s missing from socket and journal", task.task_id, lost)
                task.last_seq += 1
                warning = ev.supervisor_event(task.last_seq, task.task_id, now_iso(), ev.LOG, "WARNING",
                                              f"runner events {lost} were lost", {})  # fmt: skip
                rows.append((task.task_id, task.last_seq, task.last_seq, ev.encode(warning)))
        elif rseq > task.last_rseq + 1:
            log.error("task %s: journal jumps from rseq %d to %d", task.task_id, task.last_rseq, rseq)
        task.last_rseq = rseq
        rewritten = final = False
        if event["kind"] != ev.LOG or "progress" in event:  # a plain log line changes nothing
            rewritten = self._apply(task, event)
            final = ev.is_final(event)
        task.last_seq += 1
        seq = task.last_seq
        data = None
        if not rewritten and "seq" not in event and "source" not in event:
            # The fast path: ``raw`` as the publisher encoded it, with ``rseq`` its first key
            # (``protocol.events.runner_event`` puts it there), gets ``seq`` prepended instead of
            # being re-encoded (1 KiB); anything else (None) is re-encoded below.
            data = ev.number(raw, seq)
        if data is None:
            event.pop("source", None)  # a runner cannot claim to be the supervisor
            event.pop("seq", None)
            # ``seq`` first, as on every line the supervisor writes: the lines of a run after
            # it are numbered by their place (``protocol.events.numbered``).
            data = ev.encode({"seq": seq, **event})
        if final:
            self._held[task.task_id] = (task.task_id, seq, seq, data)
        else:
            rows.append((task.task_id, seq, seq, data))
        dirty[task.task_id] = task

    def _apply(self, task: TaskRecord, event: ev.Event) -> bool:
        """Reflect one runner event in its task record; True when ``event`` was rewritten."""
        kind = event["kind"]
        if "progress" in event:
            task.progress = max(0, min(100, event["progress"]))
        if kind == ev.METRICS and event.get("stage") == ev.EPOCH_END:
            metrics = event.get("metrics") or {}
            task.latest_metrics = metrics
            epoch = event.get("epoch", metrics.get("epoch"))
            if isinstance(epoch, int):
                task.current_epoch = epoch
            total = event.get("total_epochs", metrics.get("total_epochs"))
            if isinstance(total, int):
                task.total_epochs = total
        elif kind == ev.RESULT:
            task.result = event.get("result")
        elif kind == ev.STATUS:
            status = event.get("status")
            if status == FAILED and task.task_id in self._cancelling:
                event["kind"] = ev.LOG
                del event["status"]
                self._exit_reports[task.task_id] = event["message"]
                return True
            if status in FINAL_STATUSES:
                self._finals[task.task_id] = (str(status), event["message"])
            else:
                task.message = event["message"]
        elif kind == ev.PROGRESS:
            task.message = event["message"]
        return False

    # -- supervisor events ---------------------------------------------------------------
    def emit(self, task: TaskRecord, kind: str, message: str, level: str = "INFO", **fields: Any) -> None:
        """Store and publish one supervisor event for ``task`` and save the task with it (the
        caller sets the task's fields, status and message, first). Never raises for the disk:
        what it refuses waits in the ``backlog``."""
        event = ev.supervisor_event(0, task.task_id, now_iso(), kind, level, message, fields)
        self.backlog.add([Write(task, ev.encode(event))])
        self.store_backlog()

    def save(self, task: TaskRecord) -> None:
        """Store ``task``'s record as it is now; what the disk refuses waits in the ``backlog``."""
        self.backlog.add([Write(task)])
        self.store_backlog()

    def release_final(self, task: TaskRecord) -> bool:
        """Store and publish the runner's held final event with the (now final) task record.
        Returns False when there is none (the caller then announces the end itself)."""
        held = self._held.pop(task.task_id, None)
        if held is None:
            return False
        self.backlog.add([Write(task, held[3], held[1])])
        self.store_backlog()
        return True

    def store_backlog(self) -> bool:
        """Store the supervisor's own writes that wait (``backlog``); True when none is left."""
        return self.backlog.store(self._store, lambda rows, dirty, undo: self._flush(rows, dirty, undo=undo))

    def _unnumber(self, rows: list[Row], known: dict[str, TaskRecord], undo: Callable[[], None] | None) -> None:
        """``rows`` were not stored (a full disk): their tasks' numbering goes back to what is, so
        no ``seq`` is skipped. A runner's events come again from its journal (the next one sent
        shows the gap; the reaper reads its tail), as does a held final event numbered past it;
        the supervisor's own wait in the ``backlog`` (``undo``)."""
        for task_id in {row[0] for row in rows}:
            task, stored = self._tasks.get(task_id) or known.get(task_id), self._store.stored_counters(task_id)
            if task is None or stored is None:
                continue
            task.last_seq, task.last_rseq = stored
            held = self._held.get(task_id)
            if held is not None and held[1] > stored[0]:
                del self._held[task_id]
            log.error("task %s: events from %d on not stored (refused by the disk)", task_id, stored[0] + 1)
        if undo is not None:
            undo()

    def _flush(
        self,
        rows: list[Row],
        dirty: dict[str, TaskRecord],
        *,
        progress: bool = False,
        counted: dict[str, TaskRecord] | None = None,
        undo: Callable[[], None] | None = None,
    ) -> None:
        """Store ``rows`` and the ``dirty`` tasks in one transaction, commit, then publish the
        rows as stored (stored before published): each run of a task's events one frame, the
        same bytes as its row. ``progress``: the tasks changed only as runner events change
        them (``Store.update_progress``: a smaller write). ``counted``: tasks not in ``dirty``
        whose events here are their plain log lines only (``Store.note_events``: no write).
        Rolled back, now or with the ``batch`` it is part of: the rows' numbers are given back
        (``_unnumber``), and ``undo`` runs."""
        if not rows and not dirty:
            return
        now = time.time()
        store = self._store
        rolled_back = partial(self._unnumber, rows, dirty, undo)
        registered = False
        try:
            runs = store.append_events(rows) if rows else []
            update = store.update_progress if progress else partial(store.update_task, commit=False)
            for task in dirty.values():
                task.updated_at = now
                update(task)
            for task_id, task in (counted or {}).items():
                if task_id not in dirty:
                    task.updated_at = now
                    store.note_events(task)
            # (Once the transaction is open: a lost one before it is rolled back on opening.)
            store.on_rollback(rolled_back)
            registered = True
            # Published once stored (inside a store batch, e.g. a submit: once the batch commits).
            if runs:
                out = [(task_id.encode(), run) for task_id, run in runs]
                store.commit(after=lambda: self._publish(out))
            else:
                store.commit()
        except (OSError, sqlite3.Error) as exc:
            # Refused by the disk (an event file not written, or SQLite's own write or commit:
            # a full disk): nothing of the transaction stands, and nothing of it is published.
            store.rollback()
            if not registered:  # (else the rollback ran it)
                rolled_back()
            self.refused = f"{type(exc).__name__}: {exc}" if isinstance(exc, DISK_ERRORS) else self.refused
            raise
        if self.refused:
            log.warning("the disk takes the store's writes again")
            self.refused = ""
