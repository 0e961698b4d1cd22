"""The control commands (``protocol.commands``): parse, validate, answer — never wait on a job.

``Control.handle(request_bytes) -> reply_bytes`` is the whole surface: every reply is the
``protocol.replies`` envelope; a bad request (malformed JSON, unknown kind, wrong types,
oversized, unknown task) gets an error reply and nothing else happens. (A message over
``daemon.CONTROL_MAX_BYTES``, 16 MiB, never reaches here: ZeroMQ drops the connection.) The handlers read and
change the daemon's state through the few methods of ``Daemon`` they call.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

import protocol
from protocol import commands as cmd
from protocol.codec import ProtocolError, build, encode
from protocol.replies import CommandError, ErrorCode, error, ok
from protocol.tasks import (
    FINAL_STATUSES,
    JOBS,
    LIVE_STATUSES,
    STATUSES,
    TASK_ID_RE,
    TASK_TYPES,
    TaskRecord,
    TaskSpec,
)
from supervisor import jobs

if TYPE_CHECKING:
    from supervisor.daemon import Daemon

log = logging.getLogger(__name__)

#: A ``"token": "..."`` member of a raw request (the upload token): never quoted in a log line.
_TOKEN_MEMBER = re.compile(rb'("token"\s*:\s*)"(?:[^"\\]|\\.)*"?')

#: Most tasks one ``submit`` may carry.
MAX_SUBMIT = 1000
#: The largest seq (or count) a request may name: SQLite integers end at 2**63 - 1.
MAX_SEQ = 2**63 - 1
#: Most tasks one ``list`` page may carry.
MAX_LIST = 1000
#: A ``logs`` reply stops adding events past this many bytes (the client refuses replies over
#: ``protocol.codec.MAX_MESSAGE_BYTES``); ``final`` is then false and the caller asks again.
LOGS_REPLY_BYTES = 3 * 1024 * 1024


def _not_found(task_id: str) -> CommandError:
    return CommandError(ErrorCode.NOT_FOUND, f"task {task_id!r} not found")


class Control:
    """Answers control requests for one ``Daemon``."""

    def __init__(self, daemon: Daemon) -> None:
        self.d = daemon
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
        }

    def handle(self, data: bytes) -> bytes:
        """One request in, one encoded reply out. Never raises."""
        request_id: str | None = None
        try:
            request_id, command = cmd.parse_command(data)
            reply = ok(request_id, self._handlers[command.kind](command))
        except ProtocolError as exc:
            request_id = getattr(exc, "request_id", request_id)
            reply = error(request_id, exc.code, str(exc))
        except CommandError as exc:
            reply = error(request_id, exc.code, exc.message)
        except Exception as exc:
            log.exception("command failed: %.200r", _TOKEN_MEMBER.sub(rb'\1"***"', data))
            reply = error(request_id, ErrorCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")
        return encode(reply)

    # -- lookups -------------------------------------------------------------------------
    def _task(self, task_id: str, task_type: str | None = None) -> TaskRecord:
        task = self.d.tasks.get(task_id) or self.d.store.get_task(task_id)
        if task is None or (task_type is not None and task.task_type != task_type):
            raise _not_found(task_id)
        return task

    # -- commands ------------------------------------------------------------------------
    def submit(self, c: cmd.Submit) -> dict[str, Any]:
        if not c.tasks:
            raise CommandError(ErrorCode.BAD_REQUEST, "tasks must not be empty")
        if len(c.tasks) > MAX_SUBMIT:
            raise CommandError(ErrorCode.BAD_REQUEST, f"at most {MAX_SUBMIT} tasks per submit, got {len(c.tasks)}")
        records: list[TaskRecord] = []
        seen: set[str] = set()
        now = time.time()
        for i, raw in enumerate(c.tasks):
            where = f"tasks[{i}]" if len(c.tasks) > 1 else "task"
            if not isinstance(raw, dict):
                raise CommandError(ErrorCode.BAD_REQUEST, f"{where} must be an object")
            spec: TaskSpec = build(TaskSpec, raw, where=where)
            if spec.task_type not in TASK_TYPES:
                raise CommandError(
                    ErrorCode.BAD_REQUEST, f"{where}: task_type must be one of {', '.join(TASK_TYPES)}, got {spec.task_type!r}"
                )
            if spec.job not in JOBS:
                raise CommandError(ErrorCode.BAD_REQUEST, f"{where}: job must be one of {', '.join(JOBS)}, got {spec.job!r}")
            if JOBS.get(spec.job) != spec.task_type:
                raise CommandError(
                    ErrorCode.BAD_REQUEST,
                    f"{where}: job {spec.job!r} is not of task type {spec.task_type!r} (it is {JOBS.get(spec.job)!r})",
                )
            if spec.job == "diagnostic":
                why = jobs.diagnostic_problem(self.d.settings, spec.params)
                if why is not None:
                    code = ErrorCode.NOT_FOUND if not self.d.settings.diagnostic else ErrorCode.BAD_REQUEST
                    raise CommandError(code, f"{where}: {why}")
            if not 1 <= spec.priority <= 10:
                raise CommandError(ErrorCode.BAD_REQUEST, f"{where}: priority must be between 1 and 10, got {spec.priority}")
            why = self.d.scheduler.check_device(spec.device)
            if why is not None:
                raise CommandError(ErrorCode.BAD_REQUEST, f"{where}: {why}")
            task_id = spec.task_id if spec.task_id is not None else str(uuid.uuid4())
            if not TASK_ID_RE.fullmatch(task_id):
                raise CommandError(
                    ErrorCode.BAD_REQUEST,
                    f"{where}: task_id must be 1-128 characters of letters, digits, '_', '.', '-' "
                    f"starting with a letter or digit, got {task_id!r}",
                )
            if task_id in seen or self.d.store.exists(task_id):
                raise CommandError(ErrorCode.CONFLICT, f"task {task_id!r} already exists")
            seen.add(task_id)
            total = spec.params.get("num_epochs") if spec.task_type == "training" else None
            records.append(
                TaskRecord(
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
                    task_dir=str(self.d.settings.tasks_dir / task_id),
                )
            )
        try:
            self.d.store.insert_tasks(records)
        except sqlite3.IntegrityError:
            raise CommandError(ErrorCode.CONFLICT, "a task with one of these ids already exists") from None
        self.d.enqueue(records)
        now = time.time()
        return {"tasks": [r.response(now) for r in records]}

    def get(self, c: cmd.Get) -> dict[str, Any]:
        return {"task": self._task(c.task_id, c.task_type).response(time.time())}

    def list(self, c: cmd.List) -> dict[str, Any]:
        if c.task_type is not None and c.task_type not in TASK_TYPES:
            raise CommandError(ErrorCode.BAD_REQUEST, f"task_type must be one of {', '.join(TASK_TYPES)}, got {c.task_type!r}")
        if c.status is not None and c.status not in STATUSES:
            raise CommandError(ErrorCode.BAD_REQUEST, f"status must be one of {', '.join(STATUSES)}, got {c.status!r}")
        if not 1 <= c.limit <= MAX_LIST:
            raise CommandError(ErrorCode.BAD_REQUEST, f"limit must be between 1 and {MAX_LIST}, got {c.limit}")
        if c.cursor is not None and not 0 <= c.cursor <= MAX_SEQ:
            raise CommandError(ErrorCode.BAD_REQUEST, f"cursor must be between 0 and {MAX_SEQ}, got {c.cursor}")
        now = time.time()
        tasks = []
        # One more than the page: whether there is a next page, without a count.
        rows = self.d.store.list_tasks(c.task_type, c.status, c.limit + 1, c.cursor)
        for _, stored in rows[: c.limit]:
            live = self.d.tasks.get(stored.task_id)
            tasks.append((live or stored).response(now))
        totals = {t: 0 for t in TASK_TYPES}
        for task_type, counts in self.d.store.counts().items():
            if c.task_type is None or task_type == c.task_type:
                totals[task_type] = sum(n for status, n in counts.items() if c.status is None or status == c.status)
        next_cursor = rows[c.limit - 1][0] if len(rows) > c.limit else None
        return {"tasks": tasks, "totals": totals, "next_cursor": next_cursor}

    def cancel(self, c: cmd.Cancel) -> dict[str, Any]:
        task = self._task(c.task_id, c.task_type)
        if task.status in FINAL_STATUSES:
            raise CommandError(ErrorCode.CONFLICT, f"task {task.task_id!r} already ended ({task.status})")
        self.d.cancel(task.task_id, "cancelled on request")
        return {"task": self._task(c.task_id).response(time.time())}

    def delete(self, c: cmd.Delete) -> dict[str, Any]:
        task = self._task(c.task_id)
        if task.status in LIVE_STATUSES:
            raise CommandError(ErrorCode.CONFLICT, f"task {task.task_id!r} is {task.status}: cancel it first")
        self.d.store.delete_task(task.task_id)
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
            raise CommandError(ErrorCode.BAD_REQUEST, f"after must be between 0 and {MAX_SEQ}, got {c.after}")
        if not 1 <= c.limit <= MAX_SEQ:
            raise CommandError(ErrorCode.BAD_REQUEST, f"limit must be between 1 and {MAX_SEQ}, got {c.limit}")
        rows = self.d.store.events_after(task.task_id, c.after, min(c.limit, 100_000))
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

    def resources(self, c: cmd.Resources) -> dict[str, Any]:
        usage = self.d.scheduler.usage()
        return {
            "device_usage": usage,
            "active_tasks": self.d.scheduler.active(),
            "limits": self.d.scheduler.limits(),
            "gpu_info": self.d.gpus.info(usage),
            "queue_length": self.d.scheduler.queue_length,
            "running": self.d.scheduler.running_count,
        }

    def gpu(self, c: cmd.Gpu) -> dict[str, Any]:
        info: dict[str, Any] = self.d.gpus.info(self.d.scheduler.usage())
        return info

    def set_limits(self, c: cmd.SetLimits) -> dict[str, Any]:
        why = self.d.scheduler.validate_limits(c.limits)
        if why is not None:
            raise CommandError(ErrorCode.BAD_REQUEST, why)
        self.d.scheduler.set_limits(c.limits)
        log.info("limits changed: %s", c.limits)
        self.d.schedule()
        return {"limits": self.d.scheduler.limits(), "config": self.d.scheduler.raw_limits()}

    def ps(self, c: cmd.Ps) -> dict[str, Any]:
        return {"runners": self.d.runner_views()}

    def health(self, c: cmd.Health) -> dict[str, Any]:
        return {
            "version": protocol.__version__,
            "running": self.d.scheduler.running_count,
            "queued": self.d.scheduler.queue_length,
            "tasks": self.d.store.counts(),
            "gpu_available": self.d.gpus.count > 0,
            "gpu_count": self.d.gpus.count,
            "start_mode": self.d.settings.start_mode,
            "uptime": round(time.monotonic() - self.d.started, 3),
            "events_stored": self.d.store.events_total(),
            # Additions.
            "pid": self.d.pid,
            "subscriptions": self.d.subscriptions,
            "events_received": self.d.pipeline.received,
            "events_dropped": self.d.pipeline.dropped,
            "loop_lag_seconds": round(self.d.loop_lag, 6),
            "loop_lag_max_seconds": round(self.d.loop_lag_max, 6),
        }
