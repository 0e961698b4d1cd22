"""Control commands (web/CLI → supervisor), one frozen record each.

On the wire a command is ``{"v": 1, "id": "<request id>", "kind": "<kind>", ...fields}``.
Commands are registered explicitly in ``COMMANDS``; ``parse_command`` validates types.

Reply ``data`` per command (errors: ``protocol.replies``; codes ``not_found``, ``conflict``,
``bad_request``, ``too_large``, ``bad_version``, ``internal``):

- ``submit``     ``{"tasks": [TaskResponse, ...]}`` in the order given. ``conflict`` when a
                 custom ``task_id`` exists; ``bad_request`` for an unknown type/job, a bad
                 device (``cuda:N`` that the host does not have), priority outside 1–10.
- ``get``        ``{"task": TaskResponse}``; ``not_found`` also when ``task_type`` is given
                 and differs from the task's.
- ``list``       ``{"tasks": [TaskResponse, ...]}`` (newest first), optionally filtered.
- ``cancel``     ``{"task": TaskResponse}`` (a pending task is cancelled at once; a running
                 one gets SIGTERM, then SIGKILL after the grace period, and its status turns
                 ``cancelled`` when it is gone); ``conflict`` when the task already ended.
- ``delete``     ``{"task_id": id}``; ``conflict`` when pending or running.
- ``logs``       ``{"events": [event, ...], "final": bool, "status": str, "last_seq": int}``:
                 stored events with ``seq > after`` in order; ``final`` when the task has
                 ended and every event of it is included.
- ``resources``  ``{"device_usage": {dev: {type: n}}, "active_tasks": {dev: [{"id", "type"}]},
                 "limits": {dev: {type: n}}, "gpu_info": <gpu>, "queue_length": n,
                 "running": n}``; ``dev`` is ``cpu`` and each ``cuda:N``.
- ``gpu``        the contract's GPU info: ``{available, count, cuda_version, pytorch_version,
                 devices: [...]}`` (NVML; never torch).
- ``set_limits`` ``{"limits": {dev: {type: n}}}`` after the change (``dev``: ``cpu``, ``gpu``
                 for every GPU, or ``cuda:N``); ``bad_request`` for unknown devices or types
                 or negative numbers. The queue is re-examined at once.
- ``ps``         ``{"runners": [{task_id, task_type, device, pid, started_at, age, cgroup,
                 limits, processes: [{pid, ppid, title, status, cpu_percent, rss, threads,
                 open_files, children, gpu_memory}]}]}``.
- ``health``     ``{"version", "running", "queued", "tasks": {type: {status: n}},
                 "gpu_available", "gpu_count", "start_mode", "uptime", "events_stored"}``.
- ``shutdown``   ``{"stopping": true}``: the supervisor stops as on SIGTERM (running jobs are
                 cancelled with the grace period, pending tasks stay pending for the next
                 start); asked again while stopping, it kills the running jobs at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from protocol.codec import PROTOCOL_VERSION, ProtocolError, build, decode_object


@dataclass(frozen=True, slots=True)
class Submit:
    """Queue one or more tasks (``TaskSpec`` objects); all or none are accepted."""

    tasks: list[dict[str, Any]]
    kind: Literal["submit"] = "submit"


@dataclass(frozen=True, slots=True)
class Get:
    task_id: str
    task_type: str | None = None
    kind: Literal["get"] = "get"


@dataclass(frozen=True, slots=True)
class List:
    """One page of tasks, newest first: at most ``limit``, older than ``cursor`` (the reply's
    ``next_cursor`` of the page before; None: from the newest)."""

    task_type: str | None = None
    status: str | None = None
    limit: int = 100
    cursor: int | None = None
    kind: Literal["list"] = "list"


@dataclass(frozen=True, slots=True)
class Cancel:
    task_id: str
    task_type: str | None = None
    kind: Literal["cancel"] = "cancel"


@dataclass(frozen=True, slots=True)
class Delete:
    task_id: str
    kind: Literal["delete"] = "delete"


@dataclass(frozen=True, slots=True)
class Logs:
    """Stored events with ``seq > after`` (at most ``limit``), and whether the task has ended."""

    task_id: str
    after: int = 0
    limit: int = 10000
    kind: Literal["logs"] = "logs"


@dataclass(frozen=True, slots=True)
class Resources:
    kind: Literal["resources"] = "resources"


@dataclass(frozen=True, slots=True)
class Gpu:
    kind: Literal["gpu"] = "gpu"


@dataclass(frozen=True, slots=True)
class SetLimits:
    """``limits``: ``{device: {task_type: max_concurrent}}``; only the named entries change."""

    limits: dict[str, dict[str, int]] = field(default_factory=dict)
    kind: Literal["set_limits"] = "set_limits"


@dataclass(frozen=True, slots=True)
class Ps:
    kind: Literal["ps"] = "ps"


@dataclass(frozen=True, slots=True)
class Health:
    kind: Literal["health"] = "health"


@dataclass(frozen=True, slots=True)
class Shutdown:
    kind: Literal["shutdown"] = "shutdown"


Command = Submit | Get | List | Cancel | Delete | Logs | Resources | Gpu | SetLimits | Ps | Health | Shutdown

COMMANDS: dict[str, type] = {
    "submit": Submit,
    "get": Get,
    "list": List,
    "cancel": Cancel,
    "delete": Delete,
    "logs": Logs,
    "resources": Resources,
    "gpu": Gpu,
    "set_limits": SetLimits,
    "ps": Ps,
    "health": Health,
    "shutdown": Shutdown,
}


def parse_command(data: bytes) -> tuple[str, Command]:
    """Decode a request into ``(request_id, command)``; raise ``ProtocolError`` otherwise.

    When the id can be read it is attached to the error (``exc.request_id``) so the reply
    still reaches the right caller.
    """
    obj = decode_object(data)
    request_id = obj.pop("id", None)
    try:
        if not isinstance(request_id, str):
            raise ProtocolError("field 'id' must be a string")
        version = obj.pop("v", None)
        if version != PROTOCOL_VERSION:
            raise ProtocolError(
                f"protocol version {version!r} is not supported (expected {PROTOCOL_VERSION})",
                code="bad_version",
            )
        kind = obj.get("kind")
        cls = COMMANDS.get(kind) if isinstance(kind, str) else None
        if cls is None:
            raise ProtocolError(f"unknown command kind {kind!r}; known: {', '.join(COMMANDS)}")
        return request_id, build(cls, obj, where=f"command '{kind}'")
    except ProtocolError as exc:
        exc.request_id = request_id if isinstance(request_id, str) else None  # type: ignore[attr-defined]
        raise


def command_message(request_id: str, command: Command) -> dict[str, Any]:
    """The wire object for ``command``."""
    from protocol.codec import as_dict

    return {"v": PROTOCOL_VERSION, "id": request_id, **as_dict(command)}
