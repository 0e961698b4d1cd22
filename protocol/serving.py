"""Online serving (``contract/SERVING.md``): a deployment's settings, a replica's parameters, and
the wire between web (or the supervisor's probe) and a replica.

A deployment is a task of type ``serving``; its replicas are runner processes of job
``replica`` (``runner.serving``) that hold the model and answer requests on a ZeroMQ ROUTER bound
at ``ReplicaParams.address``. Requests never pass through the supervisor: web's DEALER sends the
raw request bytes straight to a replica.

The wire (every frame ``bytes``):

- request  ``[request_id, op, content_type, body]`` — ``op`` one of ``OPS``; ``content_type`` the
  HTTP ``Content-Type`` as sent (may be empty); ``body`` the raw HTTP body (empty for ``status``);
- reply    ``[request_id, status, body]`` — ``status`` the HTTP status as ASCII digits; ``body``:
  for 200 the JSON answer (``predict``/``predict_batch``: the contract's ``data``; the article's
  ops: the whole body, no envelope; ``status``: ``ReplicaStatus`` as JSON); otherwise
  ``{"message": "..."}`` (the reason, naming the field).

A replica answers ``status`` at once, even under load (the supervisor's probe: readiness and
figures). A full queue answers 503; web adds ``Retry-After``.

Where a replica listens: an IPC address in the supervisor host's runtime directory (the default:
one host). A replica started through the Ray executor with ``RFUAV_RAY_EVENTS=tcp`` (a port may
be opened between nodes) is placed anywhere in the cluster: its address is ``TCP_ON_NODE``, which
its runner host completes with its node's address; it binds an ephemeral port there as a CURVE
server (``ReplicaParams.curve_secret_key``, its own keypair, made by the supervisor for it) that
lets in one client key only (``curve_client_key``, checked by a ZAP handler), and writes the bound
endpoint to ``ENDPOINT_FILE`` in its task directory (shared with the supervisor, as every job's).
The routes then carry ``address`` (``tcp://…``) and ``curve`` (``ReplicaCurve``'s fields): web's
and the probe's DEALERs connect as that CURVE client. A route without ``curve`` is IPC.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

#: Deployment names: safe in a URL path and a process title. Use with ``fullmatch``.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

#: A deployment's statuses (its task is ``running`` for all but ``failed``/``stopped``).
LOADING, READY, RELOADING, FAILED, STOPPED = "loading", "ready", "reloading", "failed", "stopped"
DEPLOYMENT_STATUSES: tuple[str, ...] = (LOADING, READY, RELOADING, FAILED, STOPPED)

#: The task type and runner job of a deployment's replicas.
TASK_TYPE = "serving"
JOB = "replica"

OP_PREDICT = b"predict"
OP_PREDICT_BATCH = b"predict_batch"
OP_ARTICLE_PREDICT = b"article_predict"
OP_ARTICLE_BATCH = b"article_batch"
OP_STATUS = b"status"
OPS: frozenset[bytes] = frozenset({OP_PREDICT, OP_PREDICT_BATCH, OP_ARTICLE_PREDICT, OP_ARTICLE_BATCH, OP_STATUS})

#: The events-out topic of the routing table (``{name: route}``, JSON): no task id starts with a NUL.
ROUTES_TOPIC = b"\x00routes"

#: Upper bounds (``le``) of the histograms a replica keeps (cumulative counts are Prometheus's).
LATENCY_BUCKETS_MS: tuple[float, ...] = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
BATCH_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

#: Items one ``predict_batch`` may carry: ``max_batch_size`` times this.
BATCH_ITEMS_FACTOR = 8

#: ``ReplicaParams.address`` of a replica placed by Ray with TCP: the runner host replaces
#: ``NODE_HOST`` by its node's address; ``*``: an ephemeral port.
NODE_HOST = "{node}"
TCP_ON_NODE = f"tcp://{NODE_HOST}:*"
#: In a TCP replica's task directory: the endpoint it bound (written once bound, atomically).
ENDPOINT_FILE = "endpoint"


@dataclass(frozen=True, slots=True)
class ReplicaCurve:
    """How a client connects to a TCP replica (Z85 keys): the replica's public key (``server``)
    and the client keypair the replica lets in (``public``, ``secret``)."""

    server: str
    public: str
    secret: str


@dataclass(frozen=True, slots=True)
class ServingSettings:
    """A deployment's ``settings`` (SERVING.md; ``threads`` resolved at deploy)."""

    replicas: int = 1
    threads: int = 1
    max_batch_size: int = 16
    max_batch_delay_ms: float = 5.0
    max_queue: int = 256
    cache_size: int = 1024
    top_k: int = 5


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """A deployment's ``model`` (read from the training's ``config.yaml``, no torch needed)."""

    model: str
    num_classes: int
    image_size: int
    class_names: list[str]
    cfg_path: str
    weight_path: str


def model_config(raw: object, name: str) -> tuple[str, int, int, list[str]]:
    """A training's ``config.yaml`` as loaded (``yaml.safe_load``), checked: its ``model``,
    ``num_classes``, ``image_size`` and ``class_names`` (``0``..``num_classes - 1`` when it
    names none). ``ValueError`` saying what is wrong, after ``name`` (how the caller calls the
    file). Read alike by the supervisor (a deployment, without torch) and the runner."""
    if not isinstance(raw, dict):
        raise ValueError(f"{name} must be a mapping (a training's config.yaml)")
    for key in ("model", "num_classes", "image_size"):
        if key not in raw:
            raise ValueError(f"{name} lacks '{key}'")
    try:
        num_classes, image_size = int(raw["num_classes"]), int(raw["image_size"])
    except (TypeError, ValueError):
        raise ValueError(f"{name}: num_classes and image_size must be integers") from None
    if num_classes < 1 or image_size < 1:
        raise ValueError(f"{name}: num_classes and image_size must be >= 1")
    names = [str(n) for n in raw.get("class_names") or range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"{name}: {len(names)} class_names for num_classes {num_classes}")
    return str(raw["model"]), num_classes, image_size, names


@dataclass(frozen=True, slots=True)
class ReplicaParams:
    """``JobSpec.params`` of a replica (job ``replica``)."""

    name: str
    version: int
    #: Where the replica binds its ROUTER (``protocol.addresses.Addresses.replica``).
    address: str
    cfg_path: str
    weight_path: str
    max_batch_size: int = 16
    max_batch_delay_ms: float = 5.0
    #: This replica's share of the deployment's ``max_queue``: requests waiting beyond it get 503.
    max_queue: int = 256
    cache_size: int = 1024
    top_k: int = 5
    #: An image with more pixels than this is refused before it is decoded (decompression bombs).
    max_image_pixels: int = 25_000_000
    #: After SIGTERM: answer what arrives until this long without a request, then exit.
    drain_idle_seconds: float = 0.3
    #: ... and never drain longer than this.
    drain_seconds: float = 10.0
    #: A TCP replica (``TCP_ON_NODE``): its own CURVE secret key (it is a CURVE server), and the
    #: one client public key it lets in (Z85). Empty for IPC. Secret: the spec file is 0600.
    curve_secret_key: str = ""
    curve_client_key: str = ""

    def check(self) -> None:
        """``ValueError`` naming every field out of its range (the replica refuses to start)."""
        checks = {
            "max_batch_size": self.max_batch_size >= 1, "max_batch_delay_ms": self.max_batch_delay_ms >= 0,
            "max_queue": self.max_queue >= 1, "cache_size": self.cache_size >= 0, "top_k": self.top_k >= 1,
            "max_image_pixels": self.max_image_pixels >= 1, "drain_idle_seconds": self.drain_idle_seconds >= 0,
            "drain_seconds": self.drain_seconds >= 0,
            "curve_client_key": not self.curve_secret_key or len(self.curve_client_key) == 40,
            "curve_secret_key": not self.curve_client_key or len(self.curve_secret_key) == 40,
        }  # fmt: skip
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"replica params: out of range: {', '.join(f'{n}={getattr(self, n)}' for n in bad)}")


@dataclass(slots=True)
class ReplicaStats:
    """A replica's figures since it started (cumulative; ``queued`` is now)."""

    requests: int = 0
    errors: int = 0
    batches: int = 0
    batched_items: int = 0
    cache_hits: int = 0
    queued: int = 0
    #: HTTP status (as a string) -> answers.
    by_status: dict[str, int] = field(default_factory=dict)
    #: Counts per bucket of ``LATENCY_BUCKETS_MS`` (non-cumulative), plus one overflow bucket.
    latency_ms: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_MS) + 1))
    latency_sum_ms: float = 0.0
    #: Time from arrival to the start of the forward pass, same buckets.
    queue_wait_ms: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_MS) + 1))
    queue_wait_sum_ms: float = 0.0
    #: Forward passes per batch size bucket of ``BATCH_BUCKETS``, plus overflow.
    batch_size: list[int] = field(default_factory=lambda: [0] * (len(BATCH_BUCKETS) + 1))


@dataclass(slots=True)
class ReplicaStatus:
    """The answer to ``status``."""

    name: str
    version: int
    pid: int
    device: str
    #: ``ready`` or ``draining`` (a replica answers only once its model is loaded and warm).
    state: str
    stats: ReplicaStats
    #: How the model was prepared (``runner.inference.load_model``'s note).
    prepared: str = ""


def bucket_index(bounds: tuple[float, ...], value: float) -> int:
    """The bucket of ``value`` (the first bound ``>= value``; ``len(bounds)``: overflow)."""
    for i, bound in enumerate(bounds):
        if value <= bound:
            return i
    return len(bounds)


def quantile(bounds: tuple[float, ...], counts: list[int], q: float) -> float | None:
    """The ``q`` quantile of a bucketed histogram (linear inside the bucket), None when empty."""
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(counts):
        if n and seen + n >= rank:
            low = bounds[i - 1] if i > 0 else 0.0
            high = bounds[i] if i < len(bounds) else bounds[-1] * 2
            return float(low + (high - low) * ((rank - seen) / n))
        seen += n
    return float(bounds[-1] * 2)


def error_body(message: str) -> bytes:
    """A non-200 reply's body."""
    import orjson

    return orjson.dumps({"message": message})


def as_status(raw: Any) -> ReplicaStatus:
    """A ``status`` reply's JSON (already decoded) as a ``ReplicaStatus``."""
    from protocol.codec import build

    return build(ReplicaStatus, raw, where="replica status")  # type: ignore[no-any-return]
