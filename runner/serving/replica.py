"""A serving replica: one process that holds one model and answers requests on a ZeroMQ ROUTER
(wire: ``protocol.serving``), with dynamic batching, a result cache and its own figures.

``serve(spec)`` (``runner.entry`` for job ``replica``, after isolating and configuring the
process): load the model (``inference.load_model``: conv+bn folded, channels-last on the CPU),
warm up (a forward pass at ``max_batch_size`` and one at 1), then bind the ROUTER, so that a
``status`` answer means ready. A replica that cannot start prints ``replica failed: <reason>``
as the last line of stderr and returns 1.

The loop is single-threaded (forward passes use torch's intra-op threads): everything waiting on
the socket is received at once; ``status`` is answered at once, a cache hit too, a request
beyond ``max_queue`` waiting gets 503, the others wait in a deque. A batch starts when
``max_batch_size`` inputs wait (a batch request counts as full), ``max_batch_delay_ms`` after
the oldest arrived, or at once when no other request is expected within that delay (from the
mean gap between arrivals: a lone client pays no delay, a crowd fills the batch): requests are parsed then (a bad one gets its 400 alone), their inputs
stacked and run in forward passes of at most ``max_batch_size``, each request answered. An
exception answers 500 to the requests it touched; the loop goes on (no input ends a replica).

A TCP replica (placed by Ray) binds as a CURVE server and lets in one client key
(``runner.serving.curve``).

SIGTERM sets a flag (its wake-up byte ends the poll): the replica answers ``draining``, keeps
serving until nothing waits and no request came for ``drain_idle_seconds`` (at most
``drain_seconds``; what still waits then gets 503), closes the socket and returns 0.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import sys
import time
import traceback
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import cv2
import numpy as np
import orjson
import torch
import zmq

from protocol import serving as sv
from protocol.codec import build
from protocol.jobs import JobSpec
from runner import devices, inference
from runner.context import StopFlag
from runner.serving import answers, failure_line, inputs
from runner.serving.answers import Labels, ResultCache, Row
from runner.serving.curve import ZAP_DOMAIN, Zap, write_endpoint

#: Messages received per pass before the loop looks at its batch again (a flood cannot starve it).
RECEIVE_BURST = 4096
#: On exit, replies still in the socket get this long to leave (ms).
CLOSE_LINGER_MS = 500
#: Weight of the newest gap in the moving average of the gaps between arrivals.
GAP_WEIGHT = 0.2
#: The longest an idle poll waits: a late signal handler is noticed within this (ms).
IDLE_POLL_MS = 1000


@dataclass(slots=True)
class Pending:
    """A request waiting for its batch."""

    ident: bytes
    request_id: bytes
    op: bytes
    content_type: bytes
    body: bytes
    arrived: float
    key: bytes | None


class Replica:
    """The loaded model and the serving loop (``serve`` builds and runs one)."""

    def __init__(self, spec: JobSpec) -> None:
        started = time.monotonic()
        # Codec warnings on a client's broken image would write a line per request to stderr.log.
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
        p: sv.ReplicaParams = build(sv.ReplicaParams, spec.params, where="replica params")
        self.params = p
        p.check()
        self.host_device = spec.host_device
        self.task_dir = Path(spec.task_dir)
        self.device = devices.resolve(spec.device)
        cfg = inference.ModelConfig.load(Path(p.cfg_path))
        self.model, self.prepared = inference.load_model(cfg, Path(p.weight_path), self.device)
        self.image_size = cfg.image_size
        self.labels = Labels(p.name, p.version, tuple(cfg.class_names), min(p.top_k, cfg.num_classes))
        self.rules = inputs.Rules(
            image_size=cfg.image_size,
            preprocess=inputs.validation_preprocess(cfg.image_size, cfg.mean, cfg.std),
            max_image_pixels=p.max_image_pixels,
            max_items=p.max_batch_size * sv.BATCH_ITEMS_FACTOR,
            data_roots=tuple(Path(r) for r in spec.config.data_roots),
        )
        self._warm_up()
        self.cache = ResultCache(p.cache_size)
        self.stats = sv.ReplicaStats()
        self.pending: deque[Pending] = deque()
        self.stop = StopFlag()
        self.last_request = time.monotonic()
        #: When the last request joined the queue, and the mean gap between two (a moving average).
        self.last_arrival = -math.inf
        self.mean_gap = math.inf
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self._sock: zmq.Socket[bytes] | None = None
        self._zap: Zap | None = None
        print(
            f"replica {p.name} v{p.version}: {cfg.model} ({cfg.num_classes} classes, {cfg.image_size} px) on "
            f"{self.host_device}, {self.prepared}; loaded and warm in {time.monotonic() - started:.2f} s",
            flush=True,
        )

    def _warm_up(self) -> None:
        size = self.image_size
        self.rules.preprocess(np.zeros((size, size, 3), dtype=np.uint8))
        with torch.inference_mode():
            for n in sorted({self.params.max_batch_size, 1}, reverse=True):
                inference.forward(self.model, torch.zeros(n, 3, size, size), self.device)

    def bind(self) -> None:
        """SIGTERM handled from now on; the ROUTER bound (over a dead replica's ipc file; a TCP
        replica: as a CURVE server, its endpoint written for the supervisor)."""
        p = self.params
        if sv.NODE_HOST in p.address:
            raise ValueError(f"replica params: address {p.address} names no host (a Ray runner host completes it)")
        if p.curve_secret_key and not zmq.has("curve"):
            raise RuntimeError(f"a TCP replica needs libzmq with CURVE (libzmq {zmq.zmq_version()} has none)")

        def on_term(signum: int, frame: FrameType | None) -> None:
            self.stop.set()  # a flag and a byte only: the loop does the rest

        signal.signal(signal.SIGTERM, on_term)
        self.stop.wake_on_signals()
        self._ctx = zmq.Context(1)
        sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        self._sock = sock
        if p.curve_secret_key:
            # The handler first: from here on every handshake on this context asks it.
            self._zap = Zap(self._ctx, p.curve_client_key)
            sock.setsockopt(zmq.CURVE_SERVER, 1)
            sock.setsockopt(zmq.CURVE_SECRETKEY, p.curve_secret_key.encode())
            sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
        if p.address.startswith("tcp://["):
            sock.setsockopt(zmq.IPV6, 1)  # a node whose address is IPv6
        sock.bind(p.address)
        endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        if endpoint.startswith("tcp://"):
            write_endpoint(self.task_dir / sv.ENDPOINT_FILE, endpoint)
        print(f"replica {p.name} v{p.version} ready on {endpoint}", flush=True)

    @property
    def sock(self) -> zmq.Socket[bytes]:
        assert self._sock is not None, "bind() first"
        return self._sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=CLOSE_LINGER_MS)
            self._sock = None
        if self._ctx is not None:
            self._ctx.term()  # ends the ZAP handler's thread (its socket closes on ETERM)
            self._ctx = None
        if self._zap is not None:
            self._zap.join()
            self._zap = None

    # -- the loop ------------------------------------------------------------------------------

    def run(self) -> int:
        """Serve until SIGTERM and the drain; returns the exit code (0)."""
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self.stop.fileno(), zmq.POLLIN)
        drain_deadline = math.inf
        while True:
            now = time.monotonic()
            if self.stop.is_set() and drain_deadline == math.inf:
                drain_deadline = now + self.params.drain_seconds
                print(f"replica {self.params.name}: SIGTERM, draining {len(self.pending)} waiting", flush=True)
            if self.stop.is_set():
                if now >= drain_deadline:
                    for req in list(self.pending):
                        self._error(req, 503, "replica stopping")
                    self.pending.clear()
                    break
                if not self.pending and now - self.last_request >= self.params.drain_idle_seconds:
                    break
            for target, _ in poller.poll(self._timeout_ms(now, drain_deadline)):
                if target == self.stop.fileno():
                    self.stop.consume_wakeups()
            self._receive()
            if self._batch_due(time.monotonic()):
                self._run_batch()
        print(f"replica {self.params.name} v{self.params.version}: drained, exiting", flush=True)
        return 0

    def _gathered(self) -> int:
        """Inputs waiting, a batch request counted as a full batch (its size is known once parsed)."""
        full = self.params.max_batch_size
        return sum(inputs.item_count(req.op) or full for req in self.pending)

    def _start_at(self) -> float:
        """When the waiting batch starts: at once when it is full, or when no other request is
        expected before the oldest one's deadline (the mean gap between arrivals says when the
        next one comes: a lone client never waits out the delay); else at that deadline."""
        oldest_due = self.pending[0].arrived + self.params.max_batch_delay_ms / 1000
        if self._gathered() >= self.params.max_batch_size or self.last_arrival + self.mean_gap > oldest_due:
            return 0.0
        return oldest_due

    def _batch_due(self, now: float) -> bool:
        return bool(self.pending) and now >= self._start_at()

    def _timeout_ms(self, now: float, drain_deadline: float) -> int:
        deadlines: list[float] = []
        if self.pending:
            deadlines.append(self._start_at())
        if self.stop.is_set():
            deadlines += [drain_deadline, self.last_request + self.params.drain_idle_seconds]
        if not deadlines:
            return IDLE_POLL_MS
        return max(0, min(IDLE_POLL_MS, math.ceil((min(deadlines) - now) * 1000)))

    def _receive(self) -> None:
        """Everything waiting on the socket, without blocking."""
        for _ in range(RECEIVE_BURST):
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                self._accept(frames, time.monotonic())
            except Exception as exc:  # noqa: BLE001 - a bug must not end the replica
                traceback.print_exc()
                if len(frames) >= 2:
                    self._send(frames[0], frames[1], 500, sv.error_body(f"internal error: {_describe(exc)}"))

    def _accept(self, frames: list[bytes], now: float) -> None:
        ident = frames[0]
        if len(frames) != 5:
            request_id = frames[1] if len(frames) > 1 else b""
            message = f"frames: expected 4 (request_id, op, content_type, body), got {len(frames) - 1}"
            self._answer(ident, request_id, 400, sv.error_body(message), now)
            return
        _, request_id, op, content_type, body = frames
        if op == sv.OP_STATUS:
            self._send(ident, request_id, 200, self.status_body())
            return
        if op not in inputs.OP_FIELDS:
            message = f"op: unknown operation {op[:64].decode('latin-1')!r}"
            self._answer(ident, request_id, 400, sv.error_body(message), now)
            return
        self.last_request = now
        key = answers.cache_key(op, content_type, body) if self.params.cache_size else None
        if key is not None:
            rows = self.cache.get(key)
            if rows is not None:
                self.stats.cache_hits += 1
                latency = (time.monotonic() - now) * 1000
                body = answers.render(op, rows, self.labels, cached=True, latency_ms=latency)
                self._answer(ident, request_id, 200, body, now)
                return
        if len(self.pending) >= self.params.max_queue:
            message = f"queue full ({len(self.pending)} waiting)"
            self._answer(ident, request_id, 503, sv.error_body(message), now)
            return
        self.pending.append(Pending(ident, request_id, op, content_type, body, now, key))
        gap = now - self.last_arrival
        self.mean_gap = gap if math.isinf(self.mean_gap) else GAP_WEIGHT * gap + (1 - GAP_WEIGHT) * self.mean_gap
        self.last_arrival = now

    def _run_batch(self) -> None:
        """Parse the oldest requests up to ``max_batch_size`` inputs, run them, answer each."""
        taken: list[tuple[Pending, torch.Tensor]] = []
        count = 0
        while self.pending and count < self.params.max_batch_size:
            req = self.pending.popleft()
            try:
                x = inputs.parse_request(req.op, req.content_type, req.body, self.rules)
            except inputs.BadInput as exc:
                self._error(req, exc.status, exc.message)
                continue
            except Exception as exc:  # noqa: BLE001 - answered 500, logged
                self._internal_error([req], exc)
                continue
            taken.append((req, x))
            count += int(x.shape[0])
        if not taken:
            return
        started = time.monotonic()
        for req, _ in taken:
            answers.record_wait(self.stats, (started - req.arrived) * 1000)
        try:
            rows = self._forward(torch.cat([x for _, x in taken]))
        except Exception as exc:  # noqa: BLE001 - answered 500, logged
            self._internal_error([req for req, _ in taken], exc)
            return
        offset = 0
        for req, x in taken:
            mine = rows[offset : offset + int(x.shape[0])]
            offset += len(mine)
            try:
                latency = (time.monotonic() - req.arrived) * 1000
                body = answers.render(req.op, mine, self.labels, cached=False, latency_ms=latency)
            except Exception as exc:  # noqa: BLE001 - answered 500, logged
                self._internal_error([req], exc)
                continue
            self._answer(req.ident, req.request_id, 200, body, req.arrived)
            if req.key is not None:
                self.cache.put(req.key, mine)

    def _forward(self, images: torch.Tensor) -> list[Row]:
        """Forward passes of at most ``max_batch_size``; between two, the socket is read (so
        ``status`` is answered and others queue during a long batch request)."""
        size = self.params.max_batch_size
        rows: list[Row] = []
        with torch.inference_mode():
            for start in range(0, int(images.shape[0]), size):
                if start:
                    self._receive()
                chunk = images[start : start + size]
                probs: list[list[float]] = inference.forward(self.model, chunk, self.device).cpu().tolist()
                n = int(chunk.shape[0])
                answers.record_pass(self.stats, n)
                rows += [Row(p, n) for p in probs]
        return rows

    # -- replies -------------------------------------------------------------------------------

    def status_body(self) -> bytes:
        self.stats.queued = len(self.pending)
        status = sv.ReplicaStatus(
            name=self.params.name,
            version=self.params.version,
            pid=os.getpid(),
            device=self.host_device,
            state="draining" if self.stop.is_set() else "ready",
            stats=self.stats,
            prepared=self.prepared,
        )
        return orjson.dumps(dataclasses.asdict(status))

    def _send(self, ident: bytes, request_id: bytes, status: int, body: bytes) -> None:
        try:  # a ROUTER drops what it cannot route (a client gone); it never blocks
            self.sock.send_multipart([ident, request_id, str(status).encode(), body], zmq.NOBLOCK)
        except zmq.Again:
            pass

    def _answer(self, ident: bytes, request_id: bytes, status: int, body: bytes, arrived: float) -> None:
        """Reply to a prediction request and count it."""
        answers.record_answer(self.stats, status, (time.monotonic() - arrived) * 1000)
        self._send(ident, request_id, status, body)

    def _error(self, req: Pending, status: int, message: str) -> None:
        self._answer(req.ident, req.request_id, status, sv.error_body(message), req.arrived)

    def _internal_error(self, reqs: list[Pending], exc: Exception) -> None:
        traceback.print_exc()
        for req in reqs:
            self._error(req, 500, f"internal error: {_describe(exc)}")


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def serve(spec: JobSpec) -> int:
    """Load, warm up, bind, serve until SIGTERM and the drain; the exit code (0, or 1 when the
    replica could not start or its loop broke: ``replica failed: ...`` the last line of stderr)."""
    replica: Replica | None = None
    try:
        replica = Replica(spec)
        replica.bind()
        return replica.run()
    except Exception as exc:  # noqa: BLE001 - the supervisor reads the last line of stderr
        traceback.print_exc()
        print(failure_line(exc), file=sys.stderr, flush=True)
        return 1
    finally:
        if replica is not None:
            replica.close()
