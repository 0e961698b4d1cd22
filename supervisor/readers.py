"""The daemon's socket readers: control requests and runner events, each read by a reader
callback on the loop's own descriptor watch (``read_when_ready``), never a future per message.

- ``serve_control``: what is queued on the control ROUTER, up to ``CONTROL_BATCH`` requests,
  answered with one commit (``Control.handle_all``), then the replies.
- ``serve_events``: what is queued on events-in, up to ``BATCH`` events, ingested by the
  pipeline as one transaction and one burst of sends. ``Drained`` tells the reaper when what
  the socket held is ingested.

Each yields the loop to the other (and to everything else due) between two batches.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import zmq

from protocol import events as ev
from supervisor.control import Control
from supervisor.pipeline import Pipeline

log = logging.getLogger(__name__)

#: Runner events processed (and committed) per batch, at most (a longer message is split; a run
#: of plain log lines, ``protocol.events.PLAIN``, is taken whole: up to a runner's 1,000, passed
#: through in a few milliseconds since none of its lines is read). Control requests are answered
#: between batches, so this bounds how long a flood delays them: 250 events kept the worst
#: control answer at 17-31 ms under benchmarks.control (500: 34 ms, 2000: ~130 ms), at the same
#: events/s (a commit costs about 60 µs: 0.25 µs an event).
BATCH = 250
#: Control requests answered per reader callback before the loop serves others (events).
CONTROL_BATCH = 64
_NOWAIT = int(zmq.NOBLOCK)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)


async def serve_control(router: zmq.Socket[bytes], control: Control) -> None:
    """Control requests, read by a reader callback like ``serve_events``: each call reads
    what is queued, up to ``CONTROL_BATCH`` requests, answers them with one commit, then
    sends the replies (a ROUTER never blocks: a reply to a client that went away is
    dropped). No future per request and per reply: with ``zmq.asyncio`` those cost about
    as much as a status answer itself. Runs until cancelled."""

    def drain(more: Callable[[], None]) -> None:
        queued: list[list[bytes]] = []
        for _ in range(CONTROL_BATCH):
            if not int(router.get(_EVENTS)) & _POLLIN:
                break  # read until nothing is queued: only then does the descriptor signal
            frames = recv_message(router)
            if len(frames) >= 2:
                queued.append(frames)
        if not queued:
            return
        # One commit for what arrived together (``Control.handle_all``).
        for frames, reply in zip(queued, control.handle_all([frames[-1] for frames in queued])):
            try:
                router.send_multipart([*frames[:-1], reply], _NOWAIT)
            except zmq.ZMQError as exc:  # the client went away
                log.warning("control reply not sent: %s", exc)
        # What arrived meanwhile: the sends may have taken the descriptor's signal (it is
        # edge-triggered, and ZMQ_EVENTS must be read after a send), so look now.
        if int(router.get(_EVENTS)) & _POLLIN:
            more()  # after the events' turn

    await read_when_ready(router, drain)


class Drained:
    """Lets a coroutine wait until the events-in reader has ingested what its socket holds.

    The reaper waits for it (``wait``) before it reads an exited runner's journal tail: the
    events that runner sent before it exited are then stored from the socket, on the fast path,
    instead of from the journal (each line checked in full) and then again from the socket,
    dropped as duplicates. Measured at the end of a 250,000-event burst: the journal took
    5% of the daemon's time. Under a flood from another job the socket may never be empty:
    ``wait`` gives up after its timeout, and the journal has every event anyway."""

    def __init__(self) -> None:
        #: Whether anything is queued (set by ``serve_events``: the socket, a split message);
        #: when so, it has the reader called.
        self.pending: Callable[[], bool] = lambda: False
        self._waiters: list[asyncio.Future[None]] = []

    def emptied(self) -> None:
        """The reader found nothing more queued: wake every waiter."""
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait(self, timeout: float) -> None:
        """Return once nothing queued now is left unread, or after ``timeout`` seconds."""
        if not self.pending():
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            pass
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)


async def serve_events(sub: zmq.Socket[bytes], pipeline: Pipeline, drained: Drained | None = None) -> None:
    """Runner events, read by a reader callback on the socket's file descriptor: each call
    takes what is queued, up to ``BATCH`` events (a longer message is split, its rest goes
    first next time; a run of plain log lines is taken whole), and ingests it (one transaction, then one burst of sends). No future
    or task switch per message: at a thousand lone events a second those were a measurable
    part of every event's trip. A full batch reschedules the drain behind whatever else
    the loop has due, so a flood of events never keeps control requests, or another job's
    events, waiting longer than one batch. Runs until cancelled."""
    rest: list[bytes] | None = None  # the part of a long message past a batch: first next time

    def drain(more: Callable[[], None]) -> None:
        nonlocal rest
        batch: list[list[bytes]] = []
        count = 0
        emptied = False
        while count < BATCH:
            if rest is not None:
                msg, rest = rest, None
            elif not int(sub.get(_EVENTS)) & _POLLIN:
                # Read until nothing is queued: only then does the descriptor signal the
                # next message. (Asked, not found out by EAGAIN: raising ``zmq.Again`` costs
                # two imports and tens of microseconds, once per drain: per lone event.)
                emptied = True
                break
            else:
                msg = recv_message(sub)
                if msg[-1] == ev.PLAIN and len(msg) == 3:
                    # A runner's run of plain log lines (up to its publisher's MAX_BATCH, 1,000):
                    # ingested whole, as it is (its lines are not read: a few milliseconds; were it
                    # not the task's next run, after its journal was read, it is read event by event).
                    batch.append(msg)
                    span = ev.run_rseqs(msg[1])
                    count += 1 if span is None else max(1, span[1] - span[0] + 1)
                    continue
                msg = ev.unpack(msg)  # one event per item from here on
            room = BATCH - count
            if len(msg) - 1 > room:  # a runner's message carries up to a thousand events
                msg, rest = msg[: 1 + room], [msg[0], *msg[1 + room :]]
            batch.append(msg)
            count += len(msg) - 1
        else:
            # More may be queued: the next drain goes after the others' turn, and is queued
            # *before* this batch is ingested. Ingesting may queue the reaper's work for a
            # job that just ended; were the next drain queued after it, the reaper would read
            # the journal first and the events still on the socket would be dropped as
            # duplicates (tests/supervisor/test_events.py counts them).
            more()
        if batch:
            try:
                pipeline.ingest(batch)
            except Exception:
                log.exception("event batch of %d failed", len(batch))
        if emptied and drained is not None:
            drained.emptied()

    def expose(more: Callable[[], None]) -> None:
        def pending() -> bool:
            if rest is None and not int(sub.get(_EVENTS)) & _POLLIN:
                return False
            # Reading ZMQ_EVENTS may have taken the descriptor's (edge-triggered) signal of
            # what is queued: the drain is called from here, or it would never be.
            more()
            return True

        if drained is not None:
            drained.pending = pending

    await read_when_ready(sub, drain, expose)


async def read_when_ready(
    sock: zmq.Socket[bytes],
    drain: Callable[[Callable[[], None]], None],
    expose: Callable[[Callable[[], None]], None] = lambda more: None,
) -> None:
    """Call ``drain(more)`` whenever ``sock``'s descriptor signals, and once at the start (for
    what arrived before), until cancelled. ``drain`` calls ``more()`` when it stops with more
    queued: it runs again on the next loop turn, behind whatever else is due by then (once,
    however often ``more`` was called meanwhile). ``expose(more)``: for whatever else reads
    ``ZMQ_EVENTS`` of ``sock``, which may take the descriptor's signal, and must then call
    ``more()`` itself."""
    loop = asyncio.get_running_loop()
    fd = int(sock.get(zmq.FD))
    again: asyncio.Handle | None = None

    def step() -> None:
        nonlocal again
        again = None
        drain(more)

    def more() -> None:
        nonlocal again
        if again is None:
            again = loop.call_soon(step)

    expose(more)
    loop.add_reader(fd, step)
    try:
        step()
        await asyncio.Future()
    finally:
        loop.remove_reader(fd)
        if again is not None:
            again.cancel()


def recv_message(sock: zmq.Socket[bytes]) -> list[bytes]:
    """``recv_multipart(NOBLOCK)`` without its per-frame socket-option look-up: each frame
    says itself whether more follow (``Frame.more``), where ``get(RCVMORE)`` converts the
    option to its enum on every call (measured: 1.9 instead of 3.1 µs of CPU per frame; a
    runner packs its events into one frame now, but a control request has several)."""
    frame = sock.recv(_NOWAIT, copy=False)
    parts = [frame.bytes]
    while frame.more:
        frame = sock.recv(_NOWAIT, copy=False)
        parts.append(frame.bytes)
    return parts
