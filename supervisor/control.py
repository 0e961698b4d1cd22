"""The control commands (``protocol.commands``): parse, validate, answer — never wait on a job.

``Control.handle(request_bytes) -> reply_bytes`` is the whole surface (``handle_all`` answers
several with one commit): every reply is the
``protocol.replies`` envelope; a bad request (malformed JSON, unknown kind, wrong types,
oversized, unknown task) gets an error reply and nothing else happens. (A message over
``daemon.CONTROL_MAX_BYTES``, 16 MiB, never reaches here: ZeroMQ drops the connection.) The
handlers see the supervisor only through ``Service``, the few things they need of it.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import orjson

from protocol import commands as cmd
from protocol.codec import ProtocolError, build, encode
from protocol.records import totals
from protocol.replies import CommandError, ErrorCode, error, ok
from protocol.tasks import (
    FINAL_STATUSES,
    JOB_TASK_TYPES,
    LIVE_STATUSES,
    TASK_ID_RE,
    TASK_TYPES,
    TaskRecord,
    TaskSpec,
)
from supervisor import jobs
from supervisor.backlog import DISK_ERRORS
from supervisor.daemon_commands import DaemonCommands
from supervisor.daemon_commands import Service as DaemonService
from supervisor.records import Records
from supervisor.serving.commands import Service as ServingService
from supervisor.serving.commands import ServingCommands

log = logging.getLogger(__name__)

#: A ``"token": "..."`` member of a raw request (the upload token): never quoted in a log line.
_TOKEN_MEMBER = re.compile(rb'("token"\s*:\s*)"(?:[^"\\]|\\.)*"?')

#: Most tasks one ``submit`` may carry.
MAX_SUBMIT = 1000
#: Most final tasks one ``view`` snapshot may carry (besides every live one).
MAX_VIEW = 10_000
#: A ``logs`` reply stops adding events past this many bytes (the client refuses replies over
#: ``protocol.codec.MAX_MESSAGE_BYTES``); ``final`` is then false and the caller asks again.
LOGS_REPLY_BYTES = 3 * 1024 * 1024


class Service(ServingService, DaemonService, Protocol):
    """What the control handlers need of the supervisor (``supervisor.daemon.Daemon``): what the
    serving commands and the daemon's own commands need, and more."""

    def enqueue(self, tasks: list[TaskRecord]) -> None:
        """Queue tasks just stored."""

    def cancel(self, task_id: str, reason: str) -> None: ...


def _not_found(task_id: str) -> CommandError:
    return CommandError(ErrorCode.NOT_FOUND, f"task {task_id!r} not found")


def _request_id(data: bytes) -> str | None:
    try:
        return cmd.parse_command(data)[0]
    except Exception as exc:
        return getattr(exc, "request_id", None)


def _bad(message: str) -> CommandError:
    return CommandError(ErrorCode.BAD_REQUEST, message)


class Control:
    """Answers control requests for one ``Service``."""

    def __init__(self, service: Service, records: Records | None = None) -> None:
        """``records``: the published task records (``view``, ``get``'s ``record``, and each
        reply's position); without them those are unavailable."""
        self.service = service
        self.records = records
        self._handlers: dict[str, Callable[[Any], dict[str, Any]]] = {
            "submit": self.submit,
            "get": self.get,
            "list": self.list,
            "cancel": self.cancel,
            "delete": self.delete,
            "logs": self.logs,
            "view": self.view,
            **DaemonCommands(service).handlers(),
            **ServingCommands(service).handlers(),
        }

    def handle(self, data: bytes) -> bytes:
        """One request in, one encoded reply out. Never raises."""
        return self._stamped([self._answer(data)])[0]

    def handle_all(self, requests: list[bytes]) -> list[bytes]:
        """Answer ``requests`` in order with one commit for all they write (group commit: under
        load, the requests queued together share the transaction's cost instead of one commit
        each). What they wrote is stored, and published, before any reply is made; when that
        commit fails, every one of them is answered with the internal error. Never raises."""
        try:
            with self.service.store.batch():
                replies = [self._answer(data) for data in requests]
        except DISK_ERRORS as exc:  # (a full disk: nothing of them is stored; worth trying again)
            log.error("commit of %d control requests refused: %s: %s", len(requests), type(exc).__name__, exc)
            message = f"not stored: the supervisor's disk refuses writes ({type(exc).__name__}: {exc}); try again"
            replies = [error(_request_id(data), ErrorCode.UNAVAILABLE, message) for data in requests]
        except Exception as exc:
            log.exception("commit of %d control requests failed", len(requests))
            message = f"internal error: the commit failed: {type(exc).__name__}: {exc}"
            replies = [error(_request_id(data), ErrorCode.INTERNAL, message) for data in requests]
        return self._stamped(replies)

    def _answer(self, data: bytes) -> dict[str, Any]:
        request_id: str | None = None
        try:
            request_id, command = cmd.parse_command(data)
            return ok(request_id, self._handlers[command.kind](command))
        except ProtocolError as exc:
            return error(getattr(exc, "request_id", request_id), exc.code, str(exc))
        except CommandError as exc:
            return error(request_id, exc.code, exc.message)
        except Exception as exc:
            log.exception("command failed: %.200r", _TOKEN_MEMBER.sub(rb'\1"***"', data))
            return error(request_id, ErrorCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")

    def _stamped(self, replies: list[dict[str, Any]]) -> list[bytes]:
        # Where these answers stand among the published record changes: what they changed is
        # published before they leave (``supervisor.records``).
        if self.records is not None:
            at = list(self.records.position())
            for reply in replies:
                reply["at"] = at
        return [encode(reply) for reply in replies]

    # -- lookups -------------------------------------------------------------------------
    def _task(self, task_id: str, task_type: str | None = None) -> TaskRecord:
        task = self.service.live_task(task_id) or self.service.store.get_task(task_id)
        if task is None or (task_type is not None and task.task_type != task_type):
            raise _not_found(task_id)
        return task

    # -- submit --------------------------------------------------------------------------
    def submit(self, c: cmd.Submit) -> dict[str, Any]:
        if not c.tasks:
            raise _bad("tasks must not be empty")
        if len(c.tasks) > MAX_SUBMIT:
            raise _bad(f"at most {MAX_SUBMIT} tasks per submit, got {len(c.tasks)}")
        records: list[TaskRecord] = []
        seen: set[str] = set()
        now = time.time()
        for i, raw in enumerate(c.tasks):
            where = f"tasks[{i}]" if len(c.tasks) > 1 else "task"
            spec = self._spec(raw, where)
            task_id = self._new_id(spec, where, seen)
            records.append(self._record(spec, task_id, now))
        store = self.service.store
        with store.batch():  # the tasks and their "queued" events in one commit
            try:
                store.insert_tasks(records)
            except sqlite3.IntegrityError:
                raise CommandError(ErrorCode.CONFLICT, "a task with one of these ids already exists") from None
            self.service.enqueue(records)
        now = time.time()
        return {"tasks": [r.response(now) for r in records]}

    def _spec(self, raw: object, where: str) -> TaskSpec:
        """``raw`` as a task spec this supervisor can run; ``CommandError`` naming the field."""
        if not isinstance(raw, dict):
            raise _bad(f"{where} must be an object")
        spec: TaskSpec = build(TaskSpec, raw, where=where)
        if spec.task_type not in TASK_TYPES:
            raise _bad(f"{where}: task_type must be one of {', '.join(TASK_TYPES)}, got {spec.task_type!r}")
        if spec.task_type == "serving":
            raise _bad(f"{where}: a serving task is made by deploying a model (POST /api/v2/serving/deploy)")
        if spec.job not in JOB_TASK_TYPES:
            raise _bad(f"{where}: job must be one of {', '.join(JOB_TASK_TYPES)}, got {spec.job!r}")
        if JOB_TASK_TYPES.get(spec.job) != spec.task_type:
            raise _bad(
                f"{where}: job {spec.job!r} is not of task type {spec.task_type!r} (it is {JOB_TASK_TYPES.get(spec.job)!r})"
            )
        settings = self.service.settings
        if spec.job == "diagnostic":
            why = jobs.diagnostic_problem(settings, spec.params)
            if why is not None:
                code = ErrorCode.NOT_FOUND if not settings.diagnostic else ErrorCode.BAD_REQUEST
                raise CommandError(code, f"{where}: {why}")
        if not 1 <= spec.priority <= 10:
            raise _bad(f"{where}: priority must be between 1 and 10, got {spec.priority}")
        why = self.service.scheduler.check_device(spec.device)
        if why is not None:
            raise _bad(f"{where}: {why}")
        return spec

    def _new_id(self, spec: TaskSpec, where: str, seen: set[str]) -> str:
        """The task's id (given, or a new uuid), checked and not yet taken (in ``seen`` either)."""
        if spec.task_id is None:
            return str(uuid.uuid4())  # never taken: no lookup (one less statement per submit)
        task_id = spec.task_id
        if not TASK_ID_RE.fullmatch(task_id):
            raise _bad(
                f"{where}: task_id must be 1-128 characters of letters, digits, '_', '.', '-' "
                f"starting with a letter or digit, got {task_id!r}"
            )
        if task_id in seen or self.service.store.exists(task_id):
            raise CommandError(ErrorCode.CONFLICT, f"task {task_id!r} already exists")
        seen.add(task_id)
        return task_id

    def _record(self, spec: TaskSpec, task_id: str, now: float) -> TaskRecord:
        total = spec.params.get("num_epochs") if spec.task_type == "training" else None
        return TaskRecord(
            task_id=task_id,
            task_type=spec.task_type,
            job=spec.job,
            params=spec.params,
            requested_device=spec.device,
            priority=spec.priority,
            description=spec.description,
            strategy_type=spec.strategy_type,
            total_epochs=total if isinstance(total, int) and not isinstance(total, bool) else 0,
            created_at=now,
            updated_at=now,
            task_dir=str(self.service.settings.tasks_dir / task_id),
        )

    # -- tasks ---------------------------------------------------------------------------
    def get(self, c: cmd.Get) -> dict[str, Any]:
        task = self._task(c.task_id, c.task_type)
        out = {"task": task.response(time.time())}
        if c.record:
            out["record"] = self._records().record(task)
        return out

    def list(self, c: cmd.List) -> dict[str, Any]:
        problem = c.problem()
        if problem is not None:
            raise _bad(problem)
        store = self.service.store
        now = time.time()
        tasks = []
        # One more than the page: whether there is a next page, without a count.
        rows = store.list_tasks(c.task_type, c.status, c.limit + 1, c.cursor)
        for _, stored in rows[: c.limit]:
            live = self.service.live_task(stored.task_id)
            tasks.append((live or stored).response(now))
        next_cursor = rows[c.limit - 1][0] if len(rows) > c.limit else None
        return {"tasks": tasks, "totals": totals(store.counts(), c.task_type, c.status), "next_cursor": next_cursor}

    def cancel(self, c: cmd.Cancel) -> dict[str, Any]:
        task = self._task(c.task_id, c.task_type)
        if task.status in FINAL_STATUSES:
            raise CommandError(ErrorCode.CONFLICT, f"task {task.task_id!r} already ended ({task.status})")
        self.service.cancel(task.task_id, "cancelled on request")
        return {"task": self._task(c.task_id).response(time.time())}

    def delete(self, c: cmd.Delete) -> dict[str, Any]:
        task = self._task(c.task_id)
        if task.status in LIVE_STATUSES:
            raise CommandError(ErrorCode.CONFLICT, f"task {task.task_id!r} is {task.status}: cancel it first")
        self.service.store.delete_task(task.task_id)
        if task.task_dir:
            # The journal and spec of a deleted task must not leak into a new task of that id.
            for name in ("events.jsonl", "spec.json"):
                try:
                    (Path(task.task_dir) / name).unlink()
                except FileNotFoundError:
                    pass
        return {"task_id": task.task_id}

    def logs(self, c: cmd.Logs) -> dict[str, Any]:
        task = self._task(c.task_id)
        if not 0 <= c.after <= cmd.MAX_SEQ:
            raise _bad(f"after must be between 0 and {cmd.MAX_SEQ}, got {c.after}")
        if not 1 <= c.limit <= cmd.MAX_SEQ:
            raise _bad(f"limit must be between 1 and {cmd.MAX_SEQ}, got {c.limit}")
        rows = self.service.store.events_after(task.task_id, c.after, min(c.limit, 100_000))
        events: list[orjson.Fragment] = []
        size = 0
        for raw in rows:
            size += len(raw) + 1
            if size > LOGS_REPLY_BYTES and events:
                break
            events.append(orjson.Fragment(raw))
        last = c.after + len(events)  # seq is gap-free from 1
        final = task.status in FINAL_STATUSES and last >= task.last_seq
        return {"events": events, "final": final, "status": task.status, "last_seq": task.last_seq}

    def view(self, c: cmd.View) -> dict[str, Any]:
        if not 0 <= c.limit <= MAX_VIEW:
            raise _bad(f"limit must be between 0 and {MAX_VIEW}, got {c.limit}")
        return self._records().snapshot(c.limit)

    def _records(self) -> Records:
        if self.records is None:
            raise CommandError(ErrorCode.UNAVAILABLE, "this supervisor publishes no task records")
        return self.records
