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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson

import protocol
from protocol import commands as cmd
from protocol.codec import ProtocolError, build, encode
from protocol.records import totals
from protocol.replies import CommandError, ErrorCode, error, ok
from protocol.tasks import (
    FINAL_STATUSES,
    JOB_TASK_TYPES,
    LIVE_STATUSES,
    STATUSES,
    TASK_ID_RE,
    TASK_TYPES,
    TaskRecord,
    TaskSpec,
)
from supervisor import jobs
from supervisor.executor import Executor
from supervisor.gpu import Gpus
from supervisor.records import Records
from supervisor.serving.commands import Service as ServingService
from supervisor.serving.commands import ServingCommands

log = logging.getLogger(__name__)

#: A ``"token": "..."`` member of a raw request (the upload token): never quoted in a log line.
_TOKEN_MEMBER = re.compile(rb'("token"\s*:\s*)"(?:[^"\\]|\\.)*"?')

#: Most tasks one ``submit`` may carry.
MAX_SUBMIT = 1000
#: The largest seq (or count) a request may name: SQLite integers end at 2**63 - 1.
MAX_SEQ = 2**63 - 1
#: Most tasks one ``list`` page may carry.
MAX_LIST = 1000
#: Most final tasks one ``view`` snapshot may carry (besides every live one).
MAX_VIEW = 10_000
#: A ``logs`` reply stops adding events past this many bytes (the client refuses replies over
#: ``protocol.codec.MAX_MESSAGE_BYTES``); ``final`` is then false and the caller asks again.
LOGS_REPLY_BYTES = 3 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Figures:
    """The daemon's own figures in ``health``."""

    pid: int
    uptime: float
    subscriptions: int
    subscribed: int
    events_received: int
    events_dropped: int
    loop_lag: float
    loop_lag_max: float


class Service(ServingService, Protocol):
    """What the control handlers need of the supervisor (``supervisor.daemon.Daemon``): what the
    serving commands need (settings, store, scheduler, deployments, live tasks), and more."""

    @property
    def gpus(self) -> Gpus: ...

    @property
    def executor(self) -> Executor: ...

    def enqueue(self, tasks: list[TaskRecord]) -> None:
        """Queue tasks just stored."""

    def cancel(self, task_id: str, reason: str) -> None: ...

    def schedule(self) -> None:
        """Start what may start now (after a limit changed)."""

    def runner_views(self) -> list[dict[str, Any]]: ...

    def figures(self) -> Figures: ...

    def shutdown(self, reason: str) -> None:
        """Stop serving, as SIGTERM does (asked again: kill the running jobs)."""


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
            "resources": self.resources,
            "gpu": self.gpu,
            "set_limits": self.set_limits,
            "ps": self.ps,
            "health": self.health,
            "view": self.view,
            "shutdown": self.shutdown,
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
        if c.task_type is not None and c.task_type not in TASK_TYPES:
            raise _bad(f"task_type must be one of {', '.join(TASK_TYPES)}, got {c.task_type!r}")
        if c.status is not None and c.status not in STATUSES:
            raise _bad(f"status must be one of {', '.join(STATUSES)}, got {c.status!r}")
        if not 1 <= c.limit <= MAX_LIST:
            raise _bad(f"limit must be between 1 and {MAX_LIST}, got {c.limit}")
        if c.cursor is not None and not 0 <= c.cursor <= MAX_SEQ:
            raise _bad(f"cursor must be between 0 and {MAX_SEQ}, got {c.cursor}")
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
        if not 0 <= c.after <= MAX_SEQ:
            raise _bad(f"after must be between 0 and {MAX_SEQ}, got {c.after}")
        if not 1 <= c.limit <= MAX_SEQ:
            raise _bad(f"limit must be between 1 and {MAX_SEQ}, got {c.limit}")
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

    # -- resources -----------------------------------------------------------------------
    def resources(self, c: cmd.Resources) -> dict[str, Any]:
        scheduler = self.service.scheduler
        usage = scheduler.usage()
        return {
            "device_usage": usage,
            "active_tasks": scheduler.active(),
            "limits": scheduler.limits(),
            "gpu_info": self.service.gpus.info(usage),
            "queue_length": scheduler.queue_length,
            "running": scheduler.running_count,
        }

    def gpu(self, c: cmd.Gpu) -> dict[str, Any]:
        info: dict[str, Any] = self.service.gpus.info(self.service.scheduler.usage())
        return info

    def set_limits(self, c: cmd.SetLimits) -> dict[str, Any]:
        scheduler = self.service.scheduler
        why = scheduler.validate_limits(c.limits)
        if why is not None:
            raise _bad(why)
        scheduler.set_limits(c.limits)
        log.info("limits changed: %s", c.limits)
        self.service.schedule()
        return {"limits": scheduler.limits(), "config": scheduler.raw_limits()}

    # -- the daemon ----------------------------------------------------------------------
    def ps(self, c: cmd.Ps) -> dict[str, Any]:
        return {"runners": self.service.runner_views()}

    def health(self, c: cmd.Health) -> dict[str, Any]:
        service, scheduler, store = self.service, self.service.scheduler, self.service.store
        figures = service.figures()
        return {
            "version": protocol.__version__,
            "running": scheduler.running_count,
            "queued": scheduler.queue_length,
            "tasks": store.counts(),
            "gpu_available": service.gpus.count > 0,
            "gpu_count": service.gpus.count,
            "start_mode": service.settings.start_mode,
            "uptime": round(figures.uptime, 3),
            "events_stored": store.events_total(),
            # Additions.
            "pid": figures.pid,
            "subscriptions": figures.subscriptions,
            "subscriptions_seen": figures.subscribed,
            "events_received": figures.events_received,
            "events_dropped": figures.events_dropped,
            "loop_lag_seconds": round(figures.loop_lag, 6),
            "loop_lag_max_seconds": round(figures.loop_lag_max, 6),
            "executor": service.executor.describe(),
        }

    def view(self, c: cmd.View) -> dict[str, Any]:
        if not 0 <= c.limit <= MAX_VIEW:
            raise _bad(f"limit must be between 0 and {MAX_VIEW}, got {c.limit}")
        return self._records().snapshot(c.limit)

    def _records(self) -> Records:
        if self.records is None:
            raise CommandError(ErrorCode.UNAVAILABLE, "this supervisor publishes no task records")
        return self.records

    def shutdown(self, c: cmd.Shutdown) -> dict[str, Any]:
        # Answered first: the daemon stops after this reply, serving while jobs wind down.
        self.service.shutdown("shutdown requested")
        return {"stopping": True}
