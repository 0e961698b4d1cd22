"""``LoopSocket``: a ZeroMQ socket read from the event loop's reader callback, drained in batches.

The base of the control client (``web.control``, DEALER) and the event hub (``web.hub``, SUB).
Why a plain socket on the loop's reader instead of ``zmq.asyncio``: every HTTP request's control
round trip and every relayed event goes through one of these, and draining all ready messages in
one callback (no future and no task per receive) is what keeps them cheap.

Contracts:

- ``_open`` connects and registers the reader; ``_close`` unregisters it and closes the socket
  (``linger=0``). Both are idempotent.
- ``_receive(frames)`` is called once per message, in order, from the loop's thread.
- One callback receives at most ``BATCH`` messages; if more may be waiting it continues on the
  next loop iteration, after the loop served others (no reader starves the rest).
- ``_on_disconnect`` (a subclass's override) runs when the peer's connection drops, from a
  socket monitor that ``_open`` starts when the subclass overrides it.
- ZeroMQ's descriptor is edge-triggered: it signals a change of the socket's ``EVENTS``, not
  "readable". A send may consume the edge while messages wait, so a subclass that sends calls
  ``_schedule_drain`` after each send; ``_open`` schedules one too (messages may already be
  queued).
"""

from __future__ import annotations

import asyncio
from typing import Any

import zmq

#: Socket options every ``LoopSocket`` gets: no linger on close, and a quick reconnect (the
#: supervisor restarts; web never needs to).
_COMMON_OPTIONS: dict[int, int] = {
    zmq.LINGER: 0,
    zmq.RECONNECT_IVL: 100,
    zmq.RECONNECT_IVL_MAX: 1000,
}


def socket_events(sock: zmq.Socket[bytes]) -> int:
    """The socket's ``ZMQ_EVENTS`` bit mask (readable/writable now)."""
    value = sock.getsockopt(zmq.EVENTS)
    return value if isinstance(value, int) else 0


class LoopSocket:
    """One connected socket of ``kind`` on the running loop's reader (see the module docstring)."""

    #: Messages received per callback, at most.
    BATCH = 1000

    def __init__(self, address: str, kind: int, *, context: zmq.Context[Any] | None = None) -> None:
        self.address = address
        self._kind = kind
        self._ctx = context or zmq.Context.instance()
        self._sock: zmq.Socket[bytes] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_scheduled = False
        self._monitor: zmq.Socket[bytes] | None = None

    def _open(self, options: dict[int, int | bytes]) -> None:
        """Create the socket with ``options`` (after the common ones), connect, start reading."""
        sock: zmq.Socket[bytes] = self._ctx.socket(self._kind)
        for option, value in {**_COMMON_OPTIONS, **options}.items():
            sock.setsockopt(option, value)
        sock.connect(self.address)
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._drain)
        if type(self)._on_disconnect is not LoopSocket._on_disconnect:
            self._monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
            self._loop.add_reader(self._monitor.fileno(), self._read_monitor)
        self._schedule_drain()

    def _close(self) -> None:
        if self._monitor is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._monitor.fileno())
            if self._sock is not None:
                self._sock.disable_monitor()
            self._monitor.close(linger=0)
            self._monitor = None
        if self._sock is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._sock.fileno())
            self._sock.close(linger=0)
            self._sock = None

    def _receive(self, frames: list[bytes]) -> None:
        """One message's frames (subclasses)."""
        raise NotImplementedError

    def _on_disconnect(self) -> None:
        """The connection to the peer dropped (subclasses that care override this)."""

    def check_connection(self) -> None:
        """Handle a disconnect the monitor has seen but the loop has not called back for yet."""
        self._read_monitor()

    def _read_monitor(self) -> None:
        monitor = self._monitor
        # EVENTS first: a read calls this every time, and a receive that finds nothing raises.
        while monitor is not None and socket_events(monitor) & zmq.POLLIN:
            try:
                monitor.recv_multipart(zmq.NOBLOCK)  # only EVENT_DISCONNECTED is asked for
            except zmq.Again:
                return
            self._on_disconnect()
            monitor = self._monitor  # the callback may have closed the socket

    def _schedule_drain(self) -> None:
        """Look at the socket again soon (once, however often this is called meanwhile)."""
        if not self._drain_scheduled and self._loop is not None:
            self._drain_scheduled = True
            self._loop.call_soon(self._drain)

    def _drain(self) -> None:
        """Receive up to ``BATCH`` ready messages (called when the descriptor signals, and when
        scheduled)."""
        self._drain_scheduled = False
        sock = self._sock
        if sock is None:
            return
        for _ in range(self.BATCH):
            if not socket_events(sock) & zmq.POLLIN:
                return
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._receive(frames)
        # More may be waiting and the edge is spent: continue after the loop served others.
        self._schedule_drain()
