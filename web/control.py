"""The async control client: one DEALER socket to the supervisor's ROUTER, many requests in flight.

A request is one frame, the command's JSON (``protocol.commands.command_message``); the reply
(``protocol.replies``) carries the same request id and is routed back to its caller's future.
Contracts:

- ``call`` returns the reply's ``data`` or raises ``CommandError`` (the supervisor refused) or
  ``Unavailable`` (no supervisor connected, or no reply within the timeout).
- ``ZMQ_IMMEDIATE`` keeps requests from queueing while no supervisor is connected, so a request
  made while it is down fails after ``CONNECT_WAIT`` instead of waiting out the timeout. The
  DEALER reconnects by itself when the supervisor comes back; web never needs a restart.
- A reply that arrives after its caller gave up is dropped.

Why a plain socket on the loop's reader instead of ``zmq.asyncio``: every request of every HTTP
call goes through here, and draining all ready replies in one callback (no future and no task
per receive) is what keeps the round trip cheap. ZeroMQ's descriptor is edge-triggered, so the
socket's ``EVENTS`` are checked after every send as well.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from typing import Any

import zmq

from protocol.codec import ProtocolError, encode
from protocol.commands import Command, command_message
from protocol.replies import CommandError, parse_reply
from web.errors import Unavailable

log = logging.getLogger(__name__)

#: Seconds a request waits for its reply before it is answered as 503.
DEFAULT_TIMEOUT = 10.0
#: Seconds a request waits for a connection to the supervisor before it is answered as 503.
CONNECT_WAIT = 0.5


class ControlClient:
    """Async request/reply over one DEALER socket; shared by every request of a process."""

    def __init__(self, address: str, *, timeout: float = DEFAULT_TIMEOUT, context: zmq.Context[Any] | None = None) -> None:
        self.address = address
        self.timeout = timeout
        self._ctx = context or zmq.Context.instance()
        self._sock: zmq.Socket[bytes] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._prefix = f"w{os.getpid()}-"
        self._check_scheduled = False

    async def start(self) -> None:
        sock: zmq.Socket[bytes] = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        sock.setsockopt(zmq.SNDHWM, 10_000)
        sock.connect(self.address)
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._drain)

    async def stop(self) -> None:
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(Unavailable("web is shutting down"))
        self._pending.clear()
        if self._sock is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._sock.fileno())
            self._sock.close(linger=0)
            self._sock = None

    async def call(self, command: Command, *, timeout: float | None = None) -> dict[str, Any]:
        """Send ``command`` and wait for its reply's ``data``."""
        sock, loop = self._sock, self._loop
        if sock is None or loop is None:
            raise Unavailable("control client is not started")
        wait = timeout if timeout is not None else self.timeout
        request_id = f"{self._prefix}{next(self._ids)}"
        payload = encode(command_message(request_id, command))
        fut: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._pending[request_id] = fut
        try:
            if not self._send(payload):
                # No connection yet: give a (re)connect a moment, then fail fast.
                deadline = loop.time() + CONNECT_WAIT
                while not self._send(payload):
                    if loop.time() >= deadline:
                        raise Unavailable(
                            "the supervisor is not running or not reachable (no connection on the control socket)"
                        )
                    await asyncio.sleep(0.02)
            timer = loop.call_later(wait, _expire, fut)
            try:
                return await fut
            except TimeoutError:
                raise Unavailable(f"the supervisor did not answer '{command.kind}' within {wait:g} s") from None
            finally:
                timer.cancel()
        finally:
            self._pending.pop(request_id, None)

    def _send(self, payload: bytes) -> bool:
        assert self._sock is not None
        try:
            self._sock.send(payload, zmq.NOBLOCK)
        except zmq.Again:
            return False
        self._schedule_check()
        return True

    def _schedule_check(self) -> None:
        # A send may consume the descriptor's edge while replies wait: look again soon.
        if not self._check_scheduled and self._loop is not None:
            self._check_scheduled = True
            self._loop.call_soon(self._drain)

    def _drain(self) -> None:
        """Route every reply that is ready (called when the descriptor signals, and after sends)."""
        self._check_scheduled = False
        sock = self._sock
        if sock is None:
            return
        while socket_events(sock) & zmq.POLLIN:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            self._route(frames[-1])

    def _route(self, data: bytes) -> None:
        try:
            request_id, result = parse_reply(data)
        except ProtocolError as exc:
            log.warning("dropping malformed control reply: %s", exc)
            return
        fut = self._pending.get(request_id or "")
        if fut is None or fut.done():
            return  # its caller gave up (timeout) or the id is not ours
        if isinstance(result, CommandError):
            fut.set_exception(result)
        else:
            fut.set_result(result)


def _expire(fut: asyncio.Future[dict[str, Any]]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


def socket_events(sock: zmq.Socket[bytes]) -> int:
    """The socket's ``ZMQ_EVENTS`` bit mask (readable/writable now)."""
    value = sock.getsockopt(zmq.EVENTS)
    return value if isinstance(value, int) else 0
