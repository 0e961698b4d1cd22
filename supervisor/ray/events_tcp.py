"""Runners' events over ZeroMQ TCP with CURVE (``RFUAV_RAY_EVENTS=tcp``): one port from the Ray
nodes to the supervisor, instead of the relay through each job's runner host.

The supervisor binds a SUB socket on ``RFUAV_EVENTS_TCP`` (``host:port``) as a CURVE server: every
connection is encrypted and authenticated. Its keypair is made with ``zmq.curve_keypair`` the
first time and kept in the runtime directory (``events-curve.key``, mode 0600, the directory 0700),
so that the runners of a restarted supervisor reconnect to it. Each job gets a client keypair of
its own (``admit``), handed to its runner in the job spec (``events_server_key``,
``events_public_key``, ``events_secret_key``; ``spec.json`` is written 0600); its runner's XPUB
connects with them. A ZAP handler (ZeroMQ's authentication protocol, on this socket's own
context) lets in only the public keys of live jobs (``forget`` drops one when its job ended) and
names each connection by its task id; a message whose topic is another task's is dropped
(``foreign``): a job publishes its own events and no other's. A connection without CURVE, with
another server key or with a key of no live job never completes its handshake: nothing of it
arrives.

Messages (``[task_id, events]``, packed: ``protocol.events``) are taken in batches as in the daemon's events loop
and handed to ``deliver`` (the pipeline): same ``seq``, store and SSE.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio
import zmq.utils.z85

from protocol import events as ev

log = logging.getLogger(__name__)

#: The supervisor's keypair, in the runtime directory.
KEY_FILE = "events-curve.key"
#: Where libzmq asks a socket's context for authentication (RFC 27/ZAP).
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_DOMAIN = b"rfuav-events"
#: Events taken per batch without waiting (as ``supervisor.readers.BATCH``).
BATCH = 250
#: Inbound queue in messages (as the daemon's events-in socket): a full queue blocks runners.
RCVHWM = 1_000
_NOWAIT = int(zmq.NOBLOCK)
_RCVMORE = int(zmq.RCVMORE)

Deliver = Callable[[list[list[bytes]]], Any]


@dataclass(frozen=True)
class ClientKeys:
    """What one job's runner needs to connect: the server's public key, its own keypair (Z85)."""

    server_public: str
    public: str
    secret: str


def server_keys(runtime_dir: Path) -> tuple[bytes, bytes]:
    """The supervisor's CURVE keypair ``(public, secret)`` in Z85: read from ``KEY_FILE``, made
    the first time (mode 0600; a file others may read is replaced by a new keypair)."""
    path = runtime_dir / KEY_FILE
    try:
        st = path.stat()
        if stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.getuid():
            public, secret = path.read_bytes().split()
            if len(public) == len(secret) == 40:
                return public, secret
        log.warning("events over TCP: %s is not ours alone or not a keypair: making a new one", path)
        path.unlink()
    except FileNotFoundError:
        pass
    except ValueError:
        log.warning("events over TCP: %s is not a keypair: making a new one", path)
        path.unlink()
    public, secret = zmq.curve_keypair()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, public + b"\n" + secret + b"\n")
    finally:
        os.close(fd)
    return public, secret


def endpoint_of(address: str) -> str:
    """``host:port`` (``[v6]:port`` too) as a ZeroMQ TCP endpoint; port 0: any free port."""
    host, _, port = address.rpartition(":")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"tcp://{host}:{'*' if port == '0' else port}"


class EventsTcp:
    """The CURVE-server SUB socket and its ZAP handler (see the module docstring)."""

    def __init__(self, address: str, runtime_dir: Path, deliver: Deliver) -> None:
        self._address = address
        self._runtime_dir = runtime_dir
        self._deliver = deliver
        self._ctx: zmq.asyncio.Context | None = None
        self._sub: Any = None
        self._zap: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._server_public = b""
        #: Live jobs' client public keys (32 raw bytes) -> task id.
        self._clients: dict[bytes, str] = {}
        #: Where runners connect (the bound port, once bound).
        self.endpoint = ""
        self.messages = 0
        self.events = 0
        #: Connections refused (a key of no live job), messages dropped for naming another task.
        self.refused = 0
        self.foreign = 0
        self._warned: set[str | None] = set()

    def open(self) -> None:
        """Bind the socket (on the loop); raises when it cannot (no CURVE in libzmq, the address)."""
        if not zmq.has("curve"):
            raise RuntimeError(f"RFUAV_RAY_EVENTS=tcp needs libzmq with CURVE (libzmq {zmq.zmq_version()} has none)")
        if self._address.rpartition(":")[0].strip("[]") in ("", "*", "0.0.0.0", "::"):
            raise RuntimeError(f"RFUAV_EVENTS_TCP={self._address}: name an address of this host the nodes reach")
        self._server_public, secret = server_keys(self._runtime_dir)
        self._ctx = zmq.asyncio.Context()
        # The ZAP handler first: from here on every handshake on this context asks it.
        self._zap = self._ctx.socket(zmq.REP)
        self._zap.setsockopt(zmq.LINGER, 0)
        self._zap.bind(ZAP_ENDPOINT)
        sub = self._ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, RCVHWM)
        sub.setsockopt(zmq.CURVE_SERVER, 1)
        sub.setsockopt(zmq.CURVE_SECRETKEY, secret)
        sub.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        try:
            sub.bind(endpoint_of(self._address))
        except zmq.ZMQError as exc:
            sub.close(linger=0)
            self._zap.close(linger=0)
            self._ctx.term()
            raise RuntimeError(f"RFUAV_EVENTS_TCP={self._address}: cannot bind: {exc}") from None
        self._sub = sub
        self.endpoint = sub.getsockopt_string(zmq.LAST_ENDPOINT)
        self._tasks = [asyncio.ensure_future(self._authenticate()), asyncio.ensure_future(self._pump())]
        log.info("events over TCP with CURVE on %s (server key %s)", self.endpoint, self._server_public.decode())

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for s in (self._sub, self._zap):
            if s is not None:
                s.close(linger=0)
        if self._ctx is not None:
            self._ctx.term()

    def describe(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "jobs": len(self._clients),
            "messages": self.messages,
            "events": self.events,
            "refused": self.refused,
            "foreign": self.foreign,
        }

    # -- keys of live jobs -----------------------------------------------------------------
    def admit(self, task_id: str) -> ClientKeys:
        """A new client keypair for ``task_id``'s runner, let in from now on."""
        public, secret = zmq.curve_keypair()
        self._clients[zmq.utils.z85.decode(public)] = task_id
        return ClientKeys(self._server_public.decode(), public.decode(), secret.decode())

    def allow(self, task_id: str, public: str) -> None:
        """Let ``task_id``'s runner in again with the key it has (a supervisor restart)."""
        if len(public) == 40:
            self._clients[zmq.utils.z85.decode(public.encode())] = task_id

    def forget(self, task_id: str) -> None:
        """``task_id``'s job ended: its key no longer opens a connection (thread-safe)."""
        for key in [k for k, t in list(self._clients.items()) if t == task_id]:
            self._clients.pop(key, None)

    # -- loops -----------------------------------------------------------------------------
    async def _authenticate(self) -> None:
        """Answer ZAP requests: a CURVE client whose public key is a live job's is let in, named
        by its task id (the messages' ``User-Id``); any other is refused."""
        assert self._zap is not None
        while True:
            msg = await self._zap.recv_multipart()
            if len(msg) < 6:
                request_id = msg[1] if len(msg) > 1 else b""
                await self._zap.send_multipart([b"1.0", request_id, b"400", b"bad request", b"", b""])
                continue
            version, request_id, domain, address, _identity, mechanism, *credentials = msg
            task_id = None
            if version == b"1.0" and domain == ZAP_DOMAIN and mechanism == b"CURVE" and len(credentials) == 1:
                task_id = self._clients.get(credentials[0])
            if task_id is None:
                self.refused += 1
                log.warning("events over TCP: refused %s (%s): no live job has its key", address.decode(), mechanism)
                await self._zap.send_multipart([b"1.0", request_id, b"400", b"no live job has this key", b"", b""])
            else:
                await self._zap.send_multipart([b"1.0", request_id, b"200", b"OK", task_id.encode(), b""])

    async def _pump(self) -> None:
        assert self._sub is not None
        drain: zmq.Socket[bytes] = zmq.Socket.shadow(self._sub.underlying)
        while True:
            first = await self._sub.recv(copy=False)
            batch: list[list[bytes]] = []
            count = self._take(first, drain, batch)
            # What is already queued, without waiting: one transaction for all of it.
            while count < BATCH:
                try:
                    frame = drain.recv(_NOWAIT, copy=False)
                except zmq.Again:
                    break
                count += self._take(frame, drain, batch)
            if batch:
                try:
                    self._deliver(batch)
                except Exception:
                    log.exception("events over TCP: a batch of %d messages failed", len(batch))
            await asyncio.sleep(0)  # a flood never keeps the loop from the rest

    def _take(self, first: zmq.Frame, drain: zmq.Socket[bytes], batch: list[list[bytes]]) -> int:
        """Read the rest of the message starting with ``first`` and keep it if its topic is the
        task its connection was let in for; the number of events kept."""
        parts = [first.bytes]
        while drain.get(_RCVMORE):
            parts.append(drain.recv(_NOWAIT))
        got = first.get("User-Id")
        owner = got if isinstance(got, str) else None
        self.messages += 1
        if owner is None or parts[0] != owner.encode():
            self.foreign += 1
            if owner not in self._warned:  # once per connection's task: a flood of them is one line
                self._warned.add(owner)
                log.warning("events over TCP: dropped messages naming task %r sent with the key of task %s",
                            parts[0][:64], owner)  # fmt: skip
            return 0
        parts = ev.unpack(parts)  # one event per item
        batch.append(parts)
        self.events += len(parts) - 1
        return len(parts) - 1
