"""Control commands (web/CLI → supervisor), one frozen record each.

On the wire a command is ``{"v": 1, "id": "<request id>", "kind": "<kind>", ...fields}``.
Commands are registered explicitly in ``COMMANDS``; ``parse_command`` validates types.

Reply ``data`` per command (errors: ``protocol.replies``; codes ``not_found``, ``conflict``,
``bad_request``, ``too_large``, ``bad_version``, ``internal``):

- ``submit``     ``{"tasks": [TaskResponse, ...]}`` in the order given. ``conflict`` when a
                 custom ``task_id`` exists; ``bad_request`` for an unknown type/job, a bad
                 device (``cuda:N`` that the host does not have), priority outside 1–10.
- ``get``        ``{"task": TaskResponse}``; ``not_found`` also when ``task_type`` is given
                 and differs from the task's. With ``record``, also ``"record"``: the task's
                 published form (``protocol.records.record_fields``), for a read view.
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
- ``deploy``     ``{"deployment": Deployment}`` (``contract/SERVING.md``), status ``loading``;
                 ``conflict`` for a name in use (unless ``replace``: then a reload),
                 ``bad_request`` naming the field, ``not_found`` for an unknown ``from_task``.
- ``deployments`` ``{"deployments": [Deployment, ...]}``; ``deployment`` ``{"deployment": ...}``.
- ``undeploy``   ``{"deployment": Deployment}`` (status ``stopped`` once drained).
- ``reload``     ``{"deployment": Deployment}`` (status ``reloading``; ``version`` goes up once the
                 new replicas took over).
- ``routes``     ``{"routes": {name: Route}}``: where web sends each deployment's requests
                 (``supervisor.serving``); also published on events-out (topic ``ROUTES_TOPIC``).
- ``view``       a read view's snapshot (``supervisor.records.Records.snapshot``): ``{"epoch",
                 "rev", "floor", "records": [record_fields...], "counts"}``: the newest ``limit``
                 tasks (every task with ``ord >= floor``; 0: all) and the ones not yet final,
                 as far as 3 MiB of records allows.
- ``shutdown``   ``{"stopping": true}``: the supervisor stops as on SIGTERM (running jobs are
                 cancelled with the grace period, pending tasks stay pending for the next
                 start); asked again while stopping, it kills the running jobs at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from protocol.codec import PROTOCOL_VERSION, ProtocolError, build, decode_object
from protocol.tasks import STATUSES, TASK_TYPES

#: The largest seq (or count) a request may name: SQLite integers end at 2**63 - 1.
MAX_SEQ = 2**63 - 1
#: Most tasks one ``list`` page may carry.
MAX_LIST = 1000


@dataclass(frozen=True, slots=True)
class Submit:
    """Queue one or more tasks (``TaskSpec`` objects); all or none are accepted."""

    tasks: list[dict[str, Any]]
    kind: Literal["submit"] = "submit"


@dataclass(frozen=True, slots=True)
class Get:
    task_id: str
    task_type: str | None = None
    record: bool = False
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

    def problem(self) -> str | None:
        """Why the supervisor refuses this page (a 400 naming the field), or None."""
        if self.task_type is not None and self.task_type not in TASK_TYPES:
            return f"task_type must be one of {', '.join(TASK_TYPES)}, got {self.task_type!r}"
        if self.status is not None and self.status not in STATUSES:
            return f"status must be one of {', '.join(STATUSES)}, got {self.status!r}"
        if not 1 <= self.limit <= MAX_LIST:
            return f"limit must be between 1 and {MAX_LIST}, got {self.limit}"
        if self.cursor is not None and not 0 <= self.cursor <= MAX_SEQ:
            return f"cursor must be between 0 and {MAX_SEQ}, got {self.cursor}"
        return None


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
class View:
    """A snapshot of task records for a read view (web's ``web.view``)."""

    limit: int = 1000
    kind: Literal["view"] = "view"


@dataclass(frozen=True, slots=True)
class Shutdown:
    kind: Literal["shutdown"] = "shutdown"


@dataclass(frozen=True, slots=True)
class Deploy:
    """A deployment (``contract/SERVING.md``): ``from_task`` or ``cfg_path`` + ``weight_path``.
    None: the default (``threads``: the CPU cores over the replicas)."""

    name: str
    from_task: str | None = None
    cfg_path: str | None = None
    weight_path: str | None = None
    device: str = "cuda"
    replicas: int = 1
    threads: int | None = None
    max_batch_size: int = 16
    max_batch_delay_ms: float = 5.0
    max_queue: int = 256
    cache_size: int = 1024
    top_k: int = 5
    replace: bool = False
    kind: Literal["deploy"] = "deploy"


@dataclass(frozen=True, slots=True)
class Deployments:
    kind: Literal["deployments"] = "deployments"


@dataclass(frozen=True, slots=True)
class ShowDeployment:
    name: str
    kind: Literal["deployment"] = "deployment"


@dataclass(frozen=True, slots=True)
class Undeploy:
    name: str
    kind: Literal["undeploy"] = "undeploy"


@dataclass(frozen=True, slots=True)
class Reload:
    """Swap in new weights (or the same ones) with zero downtime."""

    name: str
    from_task: str | None = None
    cfg_path: str | None = None
    weight_path: str | None = None
    kind: Literal["reload"] = "reload"


@dataclass(frozen=True, slots=True)
class Routes:
    kind: Literal["routes"] = "routes"


Command = (
    Submit
    | Get
    | List
    | Cancel
    | Delete
    | Logs
    | Resources
    | Gpu
    | SetLimits
    | Ps
    | Health
    | View
    | Shutdown
    | Deploy
    | Deployments
    | ShowDeployment
    | Undeploy
    | Reload
    | Routes
)

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
    "view": View,
    "shutdown": Shutdown,
    "deploy": Deploy,
    "deployments": Deployments,
    "deployment": ShowDeployment,
    "undeploy": Undeploy,
    "reload": Reload,
    "routes": Routes,
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
