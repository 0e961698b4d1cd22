"""The event hub: one SUB socket per web process, fanned out in-process to SSE streams.

The SUB subscribes to every topic once, at start, so a stream never waits for a subscription to
travel to the supervisor (the slow-joiner gap); events of tasks nobody watches are dropped after
a dict lookup, without parsing. For a watched task each event is parsed and framed once and the
same bytes go to every subscriber.

Each ``Subscription`` holds a bounded buffer (``settings.sse_queue``). When a subscriber falls that
far behind it is dropped (``dropped`` is set, ``on_drop`` fires, it leaves the hub), so a slow
client never holds up the hub, the other clients or the supervisor; it resumes losslessly with
``Last-Event-ID``. The hub never blocks on a subscriber.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import zmq

from protocol import events as ev
from web.loopsocket import LoopSocket

log = logging.getLogger(__name__)


class Item(NamedTuple):
    """One event as a stream needs it: its ``seq``, SSE frame bytes and whether it is the last."""

    seq: int
    frame: bytes
    final: bool


def frame(event: Mapping[str, Any]) -> bytes:
    """The SSE frame of a stored event: ``id: <seq>`` and one ``data:`` line of JSON."""
    return b"id: %d\ndata: %s\n\n" % (event.get("seq", 0), ev.encode(ev.sse_view(event)))


def item(event: Mapping[str, Any]) -> Item:
    return Item(int(event.get("seq", 0)), frame(event), ev.is_final(event))


class Subscription:
    """One SSE client's buffer of live events for one task."""

    def __init__(self, hub: Hub, task_id: str, maxsize: int) -> None:
        self.hub = hub
        self.task_id = task_id
        self.maxsize = max(1, maxsize)
        self.dropped = False
        self.on_drop: Callable[[], None] | None = None
        self._items: deque[Item] = deque()
        # One future per wait, resolved by push/drop (cheaper than asyncio.Event + wait_for,
        # which costs a task per wake-up: it matters at 1,000 clients per event).
        self._waiter: asyncio.Future[None] | None = None

    def push(self, entry: Item) -> None:
        if self.dropped:
            return
        if len(self._items) >= self.maxsize:
            self.drop(f"fell {self.maxsize} events behind")
            return
        self._items.append(entry)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def drop(self, why: str) -> None:
        """Disconnect this subscriber: it fell too far behind (``why`` says how)."""
        if self.dropped:
            return
        self.dropped = True
        self._items.clear()
        self._wake()
        self.hub.unsubscribe(self)
        self.hub.dropped += 1
        log.info("SSE client of task %s dropped: it %s (it resumes with Last-Event-ID)", self.task_id, why)
        if self.on_drop is not None:
            self.on_drop()

    async def next_batch(self, timeout: float) -> list[Item] | None:
        """Every buffered event (possibly none once dropped), or None after ``timeout`` idle."""
        if not self._items and not self.dropped:
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            timer = loop.call_later(timeout, _resolve, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
            if not self._items and not self.dropped:
                return None
        batch = list(self._items)
        self._items.clear()
        return batch


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class Hub(LoopSocket):
    """One SUB socket on the supervisor's events-out PUB, fanned out to ``Subscription``s.

    A ``web.loopsocket.LoopSocket``: each callback drains up to ``BATCH`` ready messages (then
    yields to the loop and continues), with no future per message.
    """

    def __init__(self, address: str, *, context: zmq.Context[Any] | None = None, rcvhwm: int = 200_000) -> None:
        super().__init__(address, zmq.SUB, context=context)
        self._rcvhwm = rcvhwm
        self._subs: dict[bytes, set[Subscription]] = {}
        self.received = 0  # events that reached a watched task
        self.relayed = 0  # event deliveries to subscribers
        self.dropped = 0  # subscribers dropped for falling behind
        self.streams_total = 0
        self.sent = 0  # events written to SSE clients (stored replay and live tail)
        #: Topics that are not task ids (they start with a NUL): topic -> what reads the payload.
        self.topics: dict[bytes, Callable[[bytes], None]] = {}

    def count_sent(self, n: int) -> None:
        self.sent += n

    async def start(self) -> None:
        self._open({zmq.RCVHWM: self._rcvhwm, zmq.SUBSCRIBE: b""})

    async def stop(self) -> None:
        self._close()

    @property
    def active(self) -> int:
        """Open subscriptions (= open SSE streams)."""
        return sum(len(s) for s in self._subs.values())

    def subscribe(self, task_id: str, maxsize: int) -> Subscription:
        sub = Subscription(self, task_id, maxsize)
        self._subs.setdefault(task_id.encode(), set()).add(sub)
        self.streams_total += 1
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        key = sub.task_id.encode()
        subs = self._subs.get(key)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[key]

    def _receive(self, frames: list[bytes]) -> None:
        # [task_id, event, event, ...]: one or more events of one task (protocol.events).
        if len(frames) < 2:
            log.warning("dropping an events-out message of %d frame(s)", len(frames))
            return
        subs = self._subs.get(frames[0])
        if not subs:
            if frames[0][:1] == b"\x00" and frames[0] in self.topics:
                self.topics[frames[0]](frames[1])
            return
        for data in frames[1:]:
            try:
                entry = item(ev.decode(data))
            except (TypeError, ValueError) as exc:
                log.warning("dropping a malformed event of task %r: %s", frames[0][:64], exc)
                continue
            self.received += 1
            for sub in list(subs):  # a push may drop (and unsubscribe) a subscriber
                sub.push(entry)
            self.relayed += len(subs)
