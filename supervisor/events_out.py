"""Events out: the socket web subscribes to, and how stored events are framed on it.

An XPUB bound on ``addresses.events_out``: topic = task id, payload = the stored events' JSON,
each with its ``seq`` or, in a run of a runner's plain log lines, numbered by its place after the
run's first (``protocol.events.unpack`` gives every event its ``seq``; ``supervisor.pipeline``
stores first, then hands the batch to ``publish``).
Consecutive events of one task go out as one message ``[task_id, events]``, packed into one
frame (``protocol.events.pack``), of at most ``MAX_BATCH`` items; a long run (a burst's
batch, ``ALONE_BYTES``) goes alone, as stored. An XPUB rather than a PUB so the daemon
can count subscriptions (``health``), which lets a client know its subscription is live before
it relies on it.

A subscriber past its queue (``HWM`` messages) loses live events and fetches them again
through ``logs``: a slow subscriber never holds up the pipeline.
"""

from __future__ import annotations

import zmq
import zmq.asyncio
import zmq.backend

from protocol import events as ev

#: Outbound queue per subscriber, in messages (up to ~100 MB of 1 KiB events).
HWM = 100_000
#: Most items of ``publish`` (an event, or a run of them packed) in one message.
MAX_BATCH = 512
#: An item this long goes out alone, without being copied (pyzmq copies shorter frames anyway).
ALONE_BYTES = zmq.COPY_THRESHOLD
_NOWAIT = int(zmq.NOBLOCK)
_MORE_NOWAIT = int(zmq.NOBLOCK) | int(zmq.SNDMORE)
#: The compiled backend's ``send`` (``zmq.Socket`` wraps it in a Python method).
_send = zmq.backend.Socket.send


class EventsOut:
    """The bound XPUB, its subscription count and ``publish``."""

    def __init__(self, ctx: zmq.asyncio.Context, address: str) -> None:
        self._xpub = ctx.socket(zmq.XPUB)
        self._xpub.setsockopt(zmq.SNDHWM, HWM)
        self._xpub.setsockopt(zmq.XPUB_VERBOSER, 1)  # every (un)subscription, so the count is right
        self._xpub.setsockopt(zmq.LINGER, 0)
        self._xpub.bind(address)
        # Sends go through a plain (blocking-API) shadow: no future per send.
        self._pub: zmq.Socket[bytes] = zmq.Socket.shadow(self._xpub.underlying)
        #: Subscriptions live now (web's SUB sockets, test subscribers).
        self.subscriptions = 0
        #: Every subscription seen since start (a client waits for this to pass what it saw
        #: before subscribing: the live count can stand still while another one leaves).
        self.subscribed = 0

    def publish(self, out: list[tuple[bytes, bytes]]) -> None:
        """Send ``[(topic, events), ...]`` in order, never blocking: consecutive ones of a topic
        as one message (``events``: one event's JSON, or several packed)."""
        pub = self._pub
        # Plain sends with int flags, straight to the backend's ``send``: send_multipart's
        # enum arithmetic, and the Python layer of ``Socket.send``, cost as much as the sends
        # themselves at tens of thousands of events a second.
        send = _send
        i, n = 0, len(out)
        while i < n:
            topic = out[i][0]
            j = i + 1
            if len(out[i][1]) < ALONE_BYTES:
                while j < n and j - i < MAX_BATCH and out[j][0] == topic and len(out[j][1]) < ALONE_BYTES:
                    j += 1
            try:
                send(pub, topic, _MORE_NOWAIT)
                if j > i + 1:
                    send(pub, ev.pack([data for _, data in out[i:j]]), _NOWAIT)
                elif len(out[i][1]) < ALONE_BYTES:
                    send(pub, out[i][1], _NOWAIT)
                else:
                    send(pub, out[i][1], _NOWAIT, False)  # zero-copy
            except zmq.Again:
                # No room (XPUB drops whole messages at the high-water mark, so a topic frame
                # is never left alone); the subscriber fetches the rest through ``logs``.
                pass
            i = j

    async def watch_subscriptions(self) -> None:
        """Count (un)subscriptions as they arrive, until cancelled."""
        while True:
            msg = await self._xpub.recv()
            if msg[:1] == b"\x01":
                self.subscriptions += 1
                self.subscribed += 1
            elif msg[:1] == b"\x00":
                self.subscriptions = max(0, self.subscriptions - 1)

    def close(self) -> None:
        self._xpub.close(linger=0)
