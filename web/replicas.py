"""Where predictions go: the routing table of the deployments and one DEALER per replica.

The supervisor publishes the table (``protocol.serving.ROUTES_TOPIC`` on events-out, whenever it
changes and every few seconds; ``routes`` answers it on demand); web sends each prediction's raw
bytes straight to a replica of its deployment (``protocol.serving`` wire), choosing the one with
the fewest requests in flight. Web never decodes an image nor imports torch.

- A replica that leaves the table (a reload switched, an undeploy) keeps its link until the
  requests it holds are answered (it drains), then the link closes.
- A replica that dies with requests in flight: each of them answers 503 (the socket monitor
  reports the disconnect at once); so does a request without an answer within
  ``RFUAV_SERVING_TIMEOUT``. Nothing waits forever.
- ``ZMQ_IMMEDIATE``: a send to a replica not connected (yet) fails at once and the next replica
  is tried; with none connected the request waits up to ``CONNECT_WAIT`` for one.
- A replica entry with ``curve`` (a replica on a Ray node, ``tcp://`` on its node's address): the
  DEALER connects as the CURVE client of those keys (``protocol.serving.ReplicaCurve``; the
  supervisor's ``supervisor.serving.keeper`` says why the keys travel in the table). Without
  ``curve``: IPC, as always.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson
import zmq

from protocol import serving as sv
from web.loopsocket import LoopSocket

log = logging.getLogger(__name__)

#: Seconds a request waits for a replica to be connected before it is answered 503.
CONNECT_WAIT = 1.0

#: ``(status, body)`` of a replica's answer.
Answer = tuple[int, bytes]


class NoReplica(Exception):
    """No replica can take the request now: answered 503 with ``Retry-After``."""


class ReplicaLink(LoopSocket):
    """One DEALER to one replica; many requests in flight, each resolved by its request id."""

    def __init__(
        self,
        replica_id: str,
        address: str,
        *,
        context: zmq.Context[Any] | None = None,
        curve: sv.ReplicaCurve | None = None,
    ) -> None:
        super().__init__(address, zmq.DEALER, context=context)
        self.replica_id = replica_id
        self.curve = curve
        self.pending: dict[bytes, asyncio.Future[Answer]] = {}
        self.retired = False

    def open(self) -> None:
        options: dict[int, int | bytes] = {zmq.IMMEDIATE: 1, zmq.SNDHWM: 100_000, zmq.RCVHWM: 100_000}
        if self.curve is not None:
            options[zmq.CURVE_SERVERKEY] = self.curve.server.encode()
            options[zmq.CURVE_PUBLICKEY] = self.curve.public.encode()
            options[zmq.CURVE_SECRETKEY] = self.curve.secret.encode()
            options[zmq.IPV6] = 1  # a node's address may be IPv6 (IPv4 works as well)
        self._open(options)

    def close(self, why: str = "replica gone") -> None:
        self.fail_all(why)
        self._close()

    def send(self, request_id: bytes, op: bytes, content_type: bytes, body: bytes) -> asyncio.Future[Answer] | None:
        """Send one request; its answer's future, or None when the replica is not connected."""
        sock, loop = self._sock, self._loop
        if sock is None or loop is None:
            return None
        try:
            sock.send_multipart([request_id, op, content_type, body], zmq.NOBLOCK, copy=len(body) < 65536)
        except zmq.Again:
            return None
        fut: asyncio.Future[Answer] = loop.create_future()
        self.pending[request_id] = fut
        self._schedule_drain()
        return fut

    def forget(self, request_id: bytes) -> None:
        self.pending.pop(request_id, None)

    def fail_all(self, why: str) -> None:
        pending, self.pending = self.pending, {}
        body = sv.error_body(why)
        for fut in pending.values():
            if not fut.done():
                fut.set_result((503, body))

    def _receive(self, frames: list[bytes]) -> None:
        if len(frames) != 3:
            log.warning("replica %s: dropping an answer of %d frame(s)", self.replica_id, len(frames))
            return
        fut = self.pending.pop(frames[0], None)
        if fut is None or fut.done():
            return  # its caller gave up
        try:
            status = int(frames[1])
        except ValueError:
            status = 502
        fut.set_result((status, frames[2]))

    def _on_disconnect(self) -> None:
        if self.pending:
            log.warning("replica %s disconnected with %d request(s) in flight", self.replica_id, len(self.pending))
            self.fail_all(f"replica {self.replica_id} went away with the request in flight; it is restarted")


@dataclass
class Route:
    """One deployment as web sees it: where its requests go."""

    name: str
    task_id: str
    status: str
    version: int
    max_batch_items: int
    links: list[ReplicaLink] = field(default_factory=list)


def _curve(raw: Any) -> sv.ReplicaCurve | None:
    """A route entry's ``curve`` (None: an IPC replica); ValueError when malformed."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ValueError(f"curve: expected an object, got {type(raw).__name__}")
    keys = [raw.get(k) for k in ("server", "public", "secret")]
    if not all(isinstance(k, str) and len(k) == 40 for k in keys):
        raise ValueError("curve: server, public and secret must be Z85 keys (40 characters)")
    return sv.ReplicaCurve(*(str(k) for k in keys))


class Replicas:
    """The routing table and the links (see the module docstring). One per web process."""

    def __init__(self, timeout: float, *, context: zmq.Context[Any] | None = None) -> None:
        self.timeout = timeout
        self._ctx = context or zmq.Context.instance()
        self.routes: dict[str, Route] = {}
        self._links: dict[str, ReplicaLink] = {}
        self._ids = itertools.count(1)
        self._turn = itertools.count()
        #: ``(deployment, status)`` -> answers, as web answered them.
        self.answers: Counter[tuple[str, int]] = Counter()
        #: deployment -> (counts per ``LATENCY_BUCKETS_MS`` bucket + overflow, sum in seconds).
        self.latency: dict[str, tuple[list[int], float]] = {}
        self.known = False  # a table was applied at least once

    # -- the table -----------------------------------------------------------------------
    def apply_message(self, payload: bytes) -> None:
        try:
            table = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            log.warning("dropping a malformed routing table: %s", exc)
            return
        if isinstance(table, dict):
            self.apply(table)

    def apply(self, table: dict[str, Any]) -> None:
        """Make ``table`` (``{name: route}``, the supervisor's ``routes``) the current one."""
        routes: dict[str, Route] = {}
        wanted: set[str] = set()
        for name, raw in table.items():
            try:
                route = Route(
                    str(name), str(raw["task_id"]), str(raw["status"]), int(raw["version"]),
                    int(raw["max_batch_items"]),
                )  # fmt: skip
                replicas = [(str(r["id"]), str(r["address"]), _curve(r.get("curve"))) for r in raw["replicas"]]
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("routing table entry %r malformed: %s", name, exc)
                continue
            for replica_id, address, curve in replicas:
                wanted.add(replica_id)
                link = self._links.get(replica_id)
                if link is None:
                    link = ReplicaLink(replica_id, address, context=self._ctx, curve=curve)
                    self._links[replica_id] = link
                    link.open()
                route.links.append(link)
            routes[route.name] = route
        self.routes = routes
        self.known = True
        for replica_id, link in list(self._links.items()):
            if replica_id not in wanted:
                link.retired = True
                if not link.pending:
                    self._drop(replica_id)

    def _drop(self, replica_id: str) -> None:
        link = self._links.pop(replica_id, None)
        if link is not None:
            link.close()

    def close(self) -> None:
        for replica_id in list(self._links):
            self._drop(replica_id)
        self.routes = {}

    # -- requests ------------------------------------------------------------------------
    async def request(self, route: Route, op: bytes, content_type: bytes, body: bytes) -> Answer:
        """Send one request to the least busy replica of ``route`` and wait for its answer."""
        loop = asyncio.get_running_loop()
        request_id = str(next(self._ids)).encode()
        deadline = loop.time() + CONNECT_WAIT
        while True:
            sent = self._send(route, request_id, op, content_type, body)
            if sent is not None:
                break
            if loop.time() >= deadline or not route.links:
                state = "loading" if route.status == sv.LOADING else "has no replica ready"
                raise NoReplica(f"deployment {route.name!r} {state}")
            await asyncio.sleep(0.005)
            route = self.routes.get(route.name, route)
        link, fut = sent
        try:
            return await asyncio.wait_for(fut, self.timeout)
        except TimeoutError:
            return 503, sv.error_body(f"no answer from replica {link.replica_id} within {self.timeout:g} s")
        finally:
            link.forget(request_id)
            if link.retired and not link.pending:
                self._drop(link.replica_id)

    def _send(
        self, route: Route, request_id: bytes, op: bytes, content_type: bytes, body: bytes
    ) -> tuple[ReplicaLink, asyncio.Future[Answer]] | None:
        links = route.links
        n = len(links)
        if n == 0:
            return None
        start = next(self._turn) % n  # ties go round the replicas
        order = sorted(range(n), key=lambda i: (len(links[(start + i) % n].pending), i))
        for i in order:
            link = links[(start + i) % n]
            fut = link.send(request_id, op, content_type, body)
            if fut is not None:
                return link, fut
        return None

    def observe(self, name: str, seconds: float) -> None:
        """One answer's time in web (end to end, as the client saw it)."""
        counts, total = self.latency.get(name) or ([0] * (len(sv.LATENCY_BUCKETS_MS) + 1), 0.0)
        counts[sv.bucket_index(sv.LATENCY_BUCKETS_MS, seconds * 1000)] += 1
        self.latency[name] = (counts, total + seconds)
