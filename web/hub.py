"""The event hub: one SUB socket per web process, fanned out in-process to SSE streams.

The SUB subscribes to every topic once, at start, so a stream never waits for a subscription to
travel to the supervisor (the slow-joiner gap); events of tasks nobody watches are dropped after
a dict lookup, without parsing. For a watched task each event is parsed and framed once
(``Item.frame``, the exact SSE bytes) and that same bytes object goes to every subscriber.

Fan-out works per hub batch, not per event: ``_receive`` only collects a watched task's items,
and one ``_flush`` (scheduled once per batch of ready messages) hands each subscriber the whole
batch. A subscriber whose stream is waiting for live events (``Subscription.park``: it replayed
the stored log and has nothing buffered) is written to by the hub itself: the batch's frames,
joined once, go into that client's ASGI ``send`` without waking its task; a client woken per
event would cost a task switch, a future and a timer per client per event, and those short-lived
objects, alive across collections, are what made the cyclic GC run long full collections at
1,000 clients. The stream's task runs only when it has something to do: stored events to replay,
a gap to fetch, a heartbeat, a write the client is too slow to take at once, the end.

Driving ``send`` from the hub: the coroutine is stepped once; uvicorn writes to the transport
and finishes in that step unless the client is applying back-pressure. If it must wait, the
started coroutine (``Resume``) goes to the stream's task, which finishes it (and is timed by the
stream's write watchdog); until then the subscriber buffers. ``send`` and what wraps it
(middleware) must not depend on the current task, which holds for uvicorn's, Starlette's and ours.

Each ``Subscription`` holds a bounded buffer (``settings.sse_queue``) for the events its task has
not taken yet. When a subscriber falls that far behind it is dropped (``dropped`` is set,
``on_drop`` fires, it leaves the hub), so a slow client never holds up the hub, the other clients
or the supervisor; it resumes losslessly with ``Last-Event-ID``. The hub never blocks on a
subscriber.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Generator, Mapping
from typing import Any, NamedTuple

import zmq

from protocol import events as ev
from web.loopsocket import LoopSocket

log = logging.getLogger(__name__)

#: Largest single write to a connection: uvicorn buffers a whole piece before it applies
#: back-pressure, so this bounds what a client that stops reading can pin in memory.
WRITE_BYTES = 256 * 1024

#: An ASGI ``send``.
Send = Callable[[dict[str, Any]], Awaitable[None]]


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


def pieces(frames: list[bytes]) -> tuple[bytes, ...]:
    """``frames`` joined into writes of at most ``WRITE_BYTES`` (a frame is never split; one
    frame alone is its own bytes object)."""
    if len(frames) == 1:
        return (frames[0],)
    out: list[bytes] = []
    piece: list[bytes] = []
    size = 0
    for chunk in frames:
        piece.append(chunk)
        size += len(chunk)
        if size >= WRITE_BYTES:
            out.append(b"".join(piece))
            piece, size = [], 0
    if piece:
        out.append(b"".join(piece))
    return tuple(out)


class Resume:
    """The rest of an awaitable that was started outside its stream's task and had to wait:
    awaiting this finishes it in the awaiting task (cancellation included), as an eager task
    would have."""

    __slots__ = ("_it", "_waiting")

    def __init__(self, it: Generator[Any, None, Any], waiting: Any) -> None:
        self._it = it
        self._waiting = waiting

    def __await__(self) -> Generator[Any, None, None]:
        it, waiting = self._it, self._waiting
        while True:
            try:
                yield waiting
            except GeneratorExit:
                it.close()
                raise
            except BaseException as exc:  # thrown into the task (a cancellation): pass it on
                try:
                    waiting = it.throw(exc)
                except StopIteration:
                    return
                continue
            try:
                waiting = it.send(None)
            except StopIteration:
                return

    def close(self) -> None:
        """Abandon it (its stream ended before it could finish the write)."""
        self._it.close()


class Subscription:
    """One SSE client's view of one task's live events: its progress (``last``, ``done``), the
    events its task has not taken yet, and, while it is parked, the ``send`` the hub writes to."""

    __slots__ = (
        "hub",
        "task_id",
        "maxsize",
        "dropped",
        "on_drop",
        "last",
        "done",
        "error",
        "pending",
        "rest",
        "pending_count",
        "writing_since",
        "active_at",
        "_items",
        "_send",
        "_waiter",
    )

    def __init__(self, hub: Hub, task_id: str, maxsize: int) -> None:
        self.hub = hub
        self.task_id = task_id
        self.maxsize = max(1, maxsize)
        self.dropped = False
        self.on_drop: Callable[[], None] | None = None
        #: The ``seq`` of the last event written (or being written) to the client.
        self.last = 0
        #: The final event was written: the stream ends.
        self.done = False
        #: What a write by the hub raised (the stream's task raises it).
        self.error: Exception | None = None
        #: A write by the hub that had to wait for the client, the pieces after it, and how many
        #: events they hold: the stream's task finishes them before anything else.
        self.pending: Resume | None = None
        self.rest: tuple[bytes, ...] = ()
        self.pending_count = 0
        #: Loop time a write that has not finished yet started (None: none), and of the last write.
        self.writing_since: float | None = None
        self.active_at = 0.0
        self._items: deque[Item] = deque()
        self._send: Send | None = None
        self._waiter: asyncio.Future[bool] | None = None

    @property
    def parked(self) -> bool:
        """Whether its task waits in ``park`` (the hub writes live events itself)."""
        return self._send is not None

    def push(self, entry: Item) -> None:
        """Buffer one event for the stream's task (woken if it is parked)."""
        if self.dropped:
            return
        if len(self._items) >= self.maxsize:
            self.drop(f"fell {self.maxsize} events behind")
            return
        self._items.append(entry)
        self.wake()

    def take(self) -> list[Item]:
        """Every buffered event, oldest first (none once dropped)."""
        batch = list(self._items)
        self._items.clear()
        return batch

    def wake(self, work: bool = True) -> None:
        """Detach from the hub's direct writes and wake the parked task (``work``: False when
        only a heartbeat is due)."""
        self._send = None
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(work)

    async def park(self, send: Send) -> bool:
        """Wait for something only the stream's task can do; meanwhile the hub writes live events
        straight to ``send``. False when woken for a heartbeat only."""
        if self._items or self.dropped or self.done or self.pending is not None or self.error is not None:
            return True
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        self._send = send
        try:
            return await waiter
        finally:
            self._send = None
            self._waiter = None

    def write(self, chunks: tuple[bytes, ...], count: int, last: int, final: bool, now: float) -> None:
        """Write ``count`` events (``chunks``, shared by every subscriber) to the parked client's
        ``send``, in the hub's callback; hand what must wait to the stream's task."""
        send = self._send
        assert send is not None
        self.last = last
        self.active_at = now
        if final:
            self.done = True
        for n, body in enumerate(chunks):
            it = send({"type": "http.response.body", "body": body, "more_body": True}).__await__()
            try:
                waiting = it.send(None)
            except StopIteration:
                continue
            except Exception as exc:  # the write failed: the stream's task raises it
                self.error = exc
                self.wake()
                return
            # The client is applying back-pressure: its task finishes this write (timed by the
            # stream's watchdog) and the rest, while the hub buffers what comes next.
            self.pending = Resume(it, waiting)
            self.rest = chunks[n + 1 :]
            self.pending_count = count
            self.writing_since = now
            self.wake()
            return
        self.hub.sent += count
        if final:
            self.wake()

    def drop(self, why: str) -> None:
        """Disconnect this subscriber: it fell too far behind (``why`` says how)."""
        if self.dropped:
            return
        self.dropped = True
        self._items.clear()
        self.wake()
        self.hub.unsubscribe(self)
        self.hub.dropped += 1
        log.info("SSE client of task %s dropped: it %s (it resumes with Last-Event-ID)", self.task_id, why)
        if self.on_drop is not None:
            self.on_drop()


def _consecutive(items: list[Item]) -> bool:
    """Whether ``items`` are one run of consecutive ``seq``s, a final event only at the end."""
    first = items[0].seq
    for n, entry in enumerate(items):
        if entry.seq != first + n or (entry.final and n != len(items) - 1):
            return False
    return True


class Hub(LoopSocket):
    """One SUB socket on the supervisor's events-out PUB, fanned out to ``Subscription``s.

    A ``web.loopsocket.LoopSocket``: each callback drains up to ``BATCH`` ready messages (then
    yields to the loop and continues), with no future per message; the events of one such batch
    reach the subscribers together, in one ``_flush``.
    """

    def __init__(self, address: str, *, context: zmq.Context[Any] | None = None, rcvhwm: int = 200_000) -> None:
        super().__init__(address, zmq.SUB, context=context)
        self._rcvhwm = rcvhwm
        self._subs: dict[bytes, set[Subscription]] = {}
        #: Items received since the last flush, per watched task.
        self._batches: dict[bytes, list[Item]] = {}
        self._flush_scheduled = False
        self.received = 0  # events that reached a watched task
        self.relayed = 0  # event deliveries to subscribers
        self.dropped = 0  # subscribers dropped for falling behind
        self.streams_total = 0
        self.sent = 0  # events written to SSE clients (stored replay and live tail)
        #: Topics that are not task ids (they start with a NUL): topic -> what reads each payload.
        self.topics: dict[bytes, Callable[[bytes], None]] = {}
        #: Called when the connection to the supervisor drops (it stopped or died).
        self.on_disconnect: list[Callable[[], None]] = []
        #: Called when a stream opens or closes (``web.figures`` shares the count at once).
        self.on_streams_change: Callable[[], None] | None = None

    def count_sent(self, n: int) -> None:
        self.sent += n

    async def start(self) -> None:
        self._open({zmq.RCVHWM: self._rcvhwm, zmq.SUBSCRIBE: b""})

    async def stop(self) -> None:
        self._close()

    def drain(self) -> None:
        """Take what the socket has received now (a read that must see a write calls this)."""
        self._drain()

    def _on_disconnect(self) -> None:
        for callback in self.on_disconnect:
            callback()

    @property
    def active(self) -> int:
        """Open subscriptions (= open SSE streams)."""
        return sum(len(s) for s in self._subs.values())

    def subscribe(self, task_id: str, maxsize: int) -> Subscription:
        sub = Subscription(self, task_id, maxsize)
        self._subs.setdefault(task_id.encode(), set()).add(sub)
        self.streams_total += 1
        if self.on_streams_change is not None:
            self.on_streams_change()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        key = sub.task_id.encode()
        subs = self._subs.get(key)
        if subs is not None and sub in subs:
            subs.discard(sub)
            if not subs:
                del self._subs[key]
            if self.on_streams_change is not None:
                self.on_streams_change()

    def _receive(self, message: list[bytes]) -> None:
        # [task_id, events, ...]: one or more events of one task, packed (protocol.events).
        if len(message) < 2:
            log.warning("dropping an events-out message of %d frame(s)", len(message))
            return
        topic = message[0]
        if topic not in self._subs:  # (a task nobody here watches: not even unpacked)
            if topic[:1] == b"\x00" and topic in self.topics:
                handler = self.topics[topic]
                for payload in ev.unpack(message)[1:]:
                    handler(payload)
            return
        frames = ev.unpack(message)
        batch = self._batches.get(topic)
        if batch is None:
            batch = self._batches[topic] = []
        for data in frames[1:]:
            try:
                batch.append(item(ev.decode(data)))
            except (TypeError, ValueError) as exc:
                log.warning("dropping a malformed event of task %r: %s", topic[:64], exc)
                continue
            self.received += 1
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """Hand every task's batch to its subscribers (once per batch of received messages)."""
        self._flush_scheduled = False
        batches, self._batches = self._batches, {}
        now = asyncio.get_running_loop().time()
        for topic, items in batches.items():
            subs = self._subs.get(topic)
            if subs and items:
                self._fan_out(list(subs), items, now)  # a write or push may drop (and unsubscribe) one

    def _fan_out(self, subs: list[Subscription], items: list[Item], now: float) -> None:
        first, last, final = items[0].seq, items[-1].seq, items[-1].final
        direct = _consecutive(items)
        chunks: tuple[bytes, ...] | None = None  # the batch's bytes, joined once for all
        for sub in subs:
            if sub.last >= last:
                continue  # it has every one of them already (read from the store)
            if direct and sub.last == first - 1 and sub.parked:
                if chunks is None:
                    chunks = pieces([entry.frame for entry in items])
                sub.write(chunks, len(items), last, final, now)
            else:
                for entry in items:
                    sub.push(entry)
        self.relayed += len(items) * len(subs)
