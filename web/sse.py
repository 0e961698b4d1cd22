"""Lossless SSE log streams (API.md §8): stored log first, then the live tail, by ``seq``.

The order that makes it lossless: the endpoint subscribes to the hub *before* it reads the
stored log, so an event is either in the store's answer, in the subscription's buffer, or both
(``seq`` de-duplicates). A live event whose ``seq`` skips ahead (the hub's socket dropped or
reconnected) makes the stream fetch the gap from the store; an idle stream re-reads the store at
every heartbeat, so even a missed final event ends the stream.

Once the stream has caught up it parks (``Subscription.park``) and the hub writes the live
events to it directly, the same bytes to every client, without waking this task
(``web.hub``); the task takes over whatever needs it: buffered events, a gap, a heartbeat, a
write the client could not take at once, the end.

Frames: ``id: <seq>`` + ``data: <event JSON>`` (``protocol.events.sse_view``), ``: ping``
comments when idle. The stream ends after the task's final status event, or when the store
says the task ended and everything was sent. A client that falls ``settings.sse_queue`` events
behind, or accepts no data for two heartbeats (``write_timeout``), is disconnected; it resumes
with ``Last-Event-ID`` and loses nothing. A disconnect (``http.disconnect``) cancels the stream at
once and releases its subscription.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import anyio
from starlette.types import Message, Receive, Scope, Send

from protocol.commands import Logs
from protocol.replies import CommandError
from web.control import ControlClient
from web.errors import Unavailable
from web.hub import WRITE_BYTES, Item, Subscription, item

__all__ = ["HEADERS", "HEARTBEAT", "PAGE", "WRITE_BYTES", "EventStream", "open_stream"]

log = logging.getLogger(__name__)

HEARTBEAT = b": ping\n\n"
#: Stored events fetched per ``logs`` request.
PAGE = 2000
#: Seconds a dropped client's connection gets to take the end of the body before it is cut.
_CLOSE_GRACE = 1.0

HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"x-accel-buffering", b"no"),
]


class EventStream:
    """An ASGI response streaming one task's events after ``after``.

    ``first`` is the first ``logs`` reply (the endpoint fetched it to answer 404 properly);
    ``sub`` is the hub subscription made before it. Events written count in ``hub.sent``.
    """

    def __init__(
        self,
        task_id: str,
        after: int,
        first: dict[str, Any],
        sub: Subscription,
        control: ControlClient,
        heartbeat: float,
    ) -> None:
        self.task_id = task_id
        self.first = first
        self.sub = sub
        sub.last = after
        self.control = control
        self.heartbeat = max(0.05, heartbeat)
        #: A client that accepts no data for this long is dropped, like one whose buffer overflows
        #: (a stall while the stored log is replayed fills no buffer).
        self.write_timeout = max(1.0, 2 * self.heartbeat)
        self._timer: asyncio.TimerHandle | None = None

    @property
    def last(self) -> int:
        """The ``seq`` of the last event written (or being written)."""
        return self.sub.last

    @property
    def done(self) -> bool:
        """The final event was written."""
        return self.sub.done

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sub = self.sub
        try:
            await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
            async with anyio.create_task_group() as tg:
                sub.on_drop = tg.cancel_scope.cancel

                async def watch_disconnect() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    tg.cancel_scope.cancel()

                tg.start_soon(watch_disconnect)
                loop = asyncio.get_running_loop()
                sub.active_at = loop.time()
                self._timer = loop.call_later(self._period(), self._tick)
                await self._stream(send)
                tg.cancel_scope.cancel()
            self._release()
            # Finish the body; a client that stopped reading gets a bounded wait, then the cut.
            with anyio.move_on_after(_CLOSE_GRACE):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass  # the client went away while we wrote
        except asyncio.CancelledError:
            # uvicorn's graceful shutdown ran out (``web.server.GRACEFUL_SHUTDOWN``) and cancels
            # the streams still open: returning cuts the connection (uvicorn closes it) and the
            # client resumes with ``Last-Event-ID``; re-raising would only log a traceback.
            return
        finally:
            self._release()

    def _release(self) -> None:
        """Leave the hub: no more writes by it, no watchdog, an unfinished write abandoned."""
        sub = self.sub
        sub.hub.unsubscribe(sub)
        sub.on_drop = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if sub.pending is not None:
            sub.pending.close()
            sub.pending = None

    def _period(self) -> float:
        return self.write_timeout / 4

    def _tick(self) -> None:
        """The stream's watchdog (a timer, not a task): drops a client whose write has not
        finished for ``write_timeout``, wakes the parked stream for a heartbeat when idle."""
        sub = self.sub
        if sub.dropped:
            self._timer = None
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        since = sub.writing_since
        if since is not None and now - since > self.write_timeout:
            self._timer = None
            sub.drop(f"took longer than {self.write_timeout:g} s to accept data")
            return
        delay = self._period()
        if sub.parked:
            idle = now - sub.active_at
            if idle >= self.heartbeat:
                sub.wake(work=False)
            else:
                delay = min(delay, self.heartbeat - idle)
        self._timer = loop.call_later(delay, self._tick)

    def _bounded(self, send: Send) -> Send:
        """``send`` that records when a write started (``_tick`` drops a stalled one) and ended."""
        loop = asyncio.get_running_loop()
        sub = self.sub

        async def bounded(message: Message) -> None:
            sub.writing_since = loop.time()
            await send(message)
            sub.writing_since = None
            sub.active_at = loop.time()

        return bounded

    async def _stream(self, raw_send: Send) -> None:
        sub = self.sub
        send = self._bounded(raw_send)

        async def write(chunks: list[bytes], count: int) -> None:
            # Pieces of at most WRITE_BYTES: uvicorn buffers a whole piece before it applies
            # back-pressure, so this bounds what a client that stops reading can pin in memory.
            piece: list[bytes] = []
            size = 0
            for chunk in chunks:
                piece.append(chunk)
                size += len(chunk)
                if size >= WRITE_BYTES:
                    await send({"type": "http.response.body", "body": b"".join(piece), "more_body": True})
                    piece, size = [], 0
            if piece:
                await send({"type": "http.response.body", "body": b"".join(piece), "more_body": True})
            if count:
                sub.hub.count_sent(count)

        # 1. The stored log, page by page.
        page: dict[str, Any] | None = self.first
        while page is not None:
            chunks, count = self._take(item(e) for e in page.get("events", []))
            await write(chunks, count)
            if sub.done or (page.get("final") and sub.last >= int(page.get("last_seq", 0))):
                return
            # A reply may stop short of ``limit`` (size cap): page on until the store's end.
            if not page.get("events") or sub.last >= int(page.get("last_seq", 0)):
                break
            page = await self._logs()
        # 2. The live tail: what was buffered while this task was busy, then parked while the
        # hub writes, until something needs this task again.
        while True:
            if sub.error is not None:
                raise sub.error
            if sub.pending is not None:  # first: it may hold the final event
                await self._finish_pending(send)
            if sub.done:
                return
            batch = sub.take()
            if sub.dropped:
                return
            if batch:
                await write(*await self._live(batch))
                continue
            if not await sub.park(raw_send):  # idle for a heartbeat
                await send({"type": "http.response.body", "body": HEARTBEAT, "more_body": True})
                await write(*await self._catch_up())
            if sub.dropped:
                return

    async def _live(self, batch: list[Item]) -> tuple[list[bytes], int]:
        """Frames of buffered live events not yet sent, a gap before one fetched from the store."""
        sub = self.sub
        chunks: list[bytes] = []
        count = 0
        for entry in batch:
            if entry.seq <= sub.last:
                continue
            if entry.seq > sub.last + 1:
                more, n = await self._catch_up(until=entry.seq - 1)
                chunks += more
                count += n
                if sub.done:
                    break
            c, n = self._take([entry])
            chunks += c
            count += n
            if sub.done:
                break
        return chunks, count

    async def _finish_pending(self, send: Send) -> None:
        """Finish the hub's write that had to wait for the client, then the pieces after it."""
        sub = self.sub
        pending, rest, count = sub.pending, sub.rest, sub.pending_count
        sub.pending, sub.rest, sub.pending_count = None, (), 0
        assert pending is not None
        await pending  # sub.writing_since was set by the hub when it started
        sub.writing_since = None
        sub.active_at = asyncio.get_running_loop().time()
        for body in rest:
            await send({"type": "http.response.body", "body": body, "more_body": True})
        sub.hub.count_sent(count)

    def _take(self, entries: Iterable[Item]) -> tuple[list[bytes], int]:
        """Frames of ``entries`` not yet sent, in order, up to and including a final one."""
        sub = self.sub
        chunks = []
        for entry in entries:
            if entry.seq <= sub.last:
                continue
            chunks.append(entry.frame)
            sub.last = entry.seq
            if entry.final:
                sub.done = True
                break
        return chunks, len(chunks)

    async def _logs(self) -> dict[str, Any] | None:
        try:
            return await self.control.call(Logs(task_id=self.task_id, after=self.last, limit=PAGE))
        except CommandError as exc:
            if exc.code == "not_found":  # deleted meanwhile: nothing more will come
                self.sub.done = True
            log.info("SSE %s: cannot read stored events after %d: %s", self.task_id, self.last, exc)
            return None
        except Unavailable as exc:
            # The supervisor is away: keep the stream (heartbeats go on) and retry later.
            log.info("SSE %s: cannot read stored events after %d: %s", self.task_id, self.last, exc)
            return None

    async def _catch_up(self, until: int | None = None) -> tuple[list[bytes], int]:
        """Stored events after ``self.last`` (up to ``until``), read from the supervisor."""
        sub = self.sub
        chunks: list[bytes] = []
        while not sub.done and (until is None or sub.last < until):
            page = await self._logs()
            if page is None:
                break
            events = page.get("events", [])
            wanted = [item(e) for e in events if until is None or int(e.get("seq", 0)) <= until]
            more, _ = self._take(wanted)
            chunks += more
            if page.get("final") and sub.last >= int(page.get("last_seq", 0)):
                sub.done = True
            if not events or sub.last >= int(page.get("last_seq", 0)):
                break
        return chunks, len(chunks)


async def open_stream(
    task_id: str,
    after: int,
    control: ControlClient,
    subscribe: Callable[[str], Subscription],
    check: Callable[[], Awaitable[Any]] | None = None,
) -> tuple[Subscription, dict[str, Any]]:
    """Subscribe, then read the first page of the stored log (raising 404/503 as the endpoint
    should); the subscription is released if anything fails."""
    sub = subscribe(task_id)
    try:
        if check is not None:
            await check()
        first = await control.call(Logs(task_id=task_id, after=after, limit=PAGE))
    except BaseException:
        sub.hub.unsubscribe(sub)
        raise
    return sub, first
