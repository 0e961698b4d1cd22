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
- A reply's position among the supervisor's record changes (``protocol.replies``) goes to
  ``on_position`` before the caller sees the reply: the read view (``web.view``) waits there
  until it reflects what the request changed.

A ``web.loopsocket.LoopSocket``: replies are drained in batches from the loop's reader, with no
future and no task per receive, and the socket is looked at again after every send (its
descriptor is edge-triggered).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

import zmq

from protocol.codec import ProtocolError, encode
from protocol.commands import Command, command_message
from protocol.replies import CommandError, Position, parse_reply_at
from web.errors import Unavailable
from web.loopsocket import LoopSocket

log = logging.getLogger(__name__)

#: Seconds a request waits for its reply before it is answered as 503.
DEFAULT_TIMEOUT = 10.0
#: Seconds a request waits for a connection to the supervisor before it is answered as 503.
CONNECT_WAIT = 0.5

#: A reply as ``_receive`` hands it to its caller: its data or error, and its position.
Reply = tuple[dict[str, Any] | CommandError, Position | None]


class ControlClient(LoopSocket):
    """Async request/reply over one DEALER socket; shared by every request of a process."""

    def __init__(
        self, address: str, *, timeout: float = DEFAULT_TIMEOUT, context: zmq.Context[Any] | None = None
    ) -> None:
        super().__init__(address, zmq.DEALER, context=context)
        self.timeout = timeout
        self._pending: dict[str, asyncio.Future[Reply]] = {}
        self._ids = itertools.count(1)
        self._prefix = f"w{os.getpid()}-"
        #: Awaited with each reply's position before the caller gets the reply (``web.view``).
        self.on_position: Callable[[Position], Awaitable[None]] | None = None

    async def start(self) -> None:
        self._open({zmq.IMMEDIATE: 1, zmq.SNDHWM: 10_000})

    async def stop(self) -> None:
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(Unavailable("web is shutting down"))
        self._pending.clear()
        self._close()

    async def call(self, command: Command, *, timeout: float | None = None) -> dict[str, Any]:
        """Send ``command`` and wait for its reply's ``data``."""
        sock, loop = self._sock, self._loop
        if sock is None or loop is None:
            raise Unavailable("control client is not started")
        wait = timeout if timeout is not None else self.timeout
        request_id = f"{self._prefix}{next(self._ids)}"
        payload = encode(command_message(request_id, command))
        fut: asyncio.Future[Reply] = loop.create_future()
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
                result, at = await fut
            except TimeoutError:
                raise Unavailable(f"the supervisor did not answer '{command.kind}' within {wait:g} s") from None
            finally:
                timer.cancel()
        finally:
            self._pending.pop(request_id, None)
        if at is not None and self.on_position is not None:
            await self.on_position(at)
        if isinstance(result, CommandError):
            raise result
        return result

    def _send(self, payload: bytes) -> bool:
        assert self._sock is not None
        try:
            self._sock.send(payload, zmq.NOBLOCK)
        except zmq.Again:
            return False
        self._schedule_drain()  # the send may have consumed the edge of a waiting reply
        return True

    def _receive(self, frames: list[bytes]) -> None:
        """Route one reply (its last frame; a DEALER sees no envelope) to its caller."""
        try:
            request_id, result, at = parse_reply_at(frames[-1])
        except ProtocolError as exc:
            log.warning("dropping malformed control reply: %s", exc)
            return
        fut = self._pending.get(request_id or "")
        if fut is None or fut.done():
            return  # its caller gave up (timeout) or the id is not ours
        fut.set_result((result, at))


def _expire(fut: asyncio.Future[Reply]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())
