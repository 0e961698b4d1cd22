"""Lossless SSE log streams (API.md §8): stored log first, then the live tail, by ``seq``.

The order that makes it lossless: the endpoint subscribes to the hub *before* it reads the
stored log, so an event is either in the store's answer, in the subscription's buffer, or both
(``seq`` de-duplicates). A live event whose ``seq`` skips ahead (the hub's socket dropped or
reconnected) makes the stream fetch the gap from the store; an idle stream re-reads the store at
every heartbeat, so even a missed final event ends the stream.

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
from web.hub import Item, Subscription, item

log = logging.getLogger(__name__)

HEARTBEAT = b": ping\n\n"
#: Stored events fetched per ``logs`` request.
PAGE = 2000
#: Largest single write to the connection.
WRITE_BYTES = 256 * 1024
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
    ``sub`` is the hub subscription made before it. ``on_frames(n)`` counts relayed events.
    """

    def __init__(
        self,
        task_id: str,
        after: int,
        first: dict[str, Any],
        sub: Subscription,
        control: ControlClient,
        heartbeat: float,
        on_frames: Callable[[int], None] | None = None,
    ) -> None:
        self.task_id = task_id
        self.last = after
        self.first = first
        self.sub = sub
        self.control = control
        self.heartbeat = max(0.05, heartbeat)
        #: A client that accepts no data for this long is dropped, like one whose buffer overflows
        #: (a stall while the stored log is replayed fills no buffer).
        self.write_timeout = max(1.0, 2 * self.heartbeat)
        self._writing_since: float | None = None
        self.on_frames = on_frames
        self.done = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        dropped = anyio.Event()
        self.sub.on_drop = dropped.set
        try:
            await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
            async with anyio.create_task_group() as tg:

                async def stream() -> None:
                    await self._stream(self._bounded(send))
                    tg.cancel_scope.cancel()

                async def watch_disconnect() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    tg.cancel_scope.cancel()

                async def watch_drop() -> None:
                    await dropped.wait()
                    tg.cancel_scope.cancel()

                tg.start_soon(stream)
                tg.start_soon(watch_disconnect)
                tg.start_soon(watch_drop)
                tg.start_soon(self._watch_writes)
            # Finish the body; a client that stopped reading gets a bounded wait, then the cut.
            with anyio.move_on_after(_CLOSE_GRACE):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass  # the client went away while we wrote
        finally:
            self.sub.hub.unsubscribe(self.sub)

    def _bounded(self, send: Send) -> Send:
        """``send`` that records when a write started; ``_watch_writes`` drops a stalled one.
        (A timer per client beats a cancel scope per write when 1,000 clients get each event.)"""
        loop = asyncio.get_running_loop()

        async def bounded(message: Message) -> None:
            self._writing_since = loop.time()
            await send(message)
            self._writing_since = None

        return bounded

    async def _watch_writes(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.write_timeout / 4)
            since = self._writing_since
            if since is not None and loop.time() - since > self.write_timeout:
                self.sub.drop(f"took longer than {self.write_timeout:g} s to accept data")
                return

    async def _stream(self, send: Send) -> None:
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
            if count and self.on_frames is not None:
                self.on_frames(count)

        # 1. The stored log, page by page.
        page: dict[str, Any] | None = self.first
        while page is not None:
            chunks, count = self._take(item(e) for e in page.get("events", []))
            await write(chunks, count)
            if self.done or (page.get("final") and self.last >= int(page.get("last_seq", 0))):
                return
            # A reply may stop short of ``limit`` (size cap): page on until the store's end.
            if not page.get("events") or self.last >= int(page.get("last_seq", 0)):
                break
            page = await self._logs()
        # 2. The live tail.
        while not self.done:
            batch = await self.sub.next_batch(self.heartbeat)
            if self.sub.dropped:
                return
            if batch is None:
                await send({"type": "http.response.body", "body": HEARTBEAT, "more_body": True})
                await write(*await self._catch_up())
                continue
            chunks, count = [], 0
            for entry in batch:
                if entry.seq <= self.last:
                    continue
                if entry.seq > self.last + 1:
                    more, n = await self._catch_up(until=entry.seq - 1)
                    chunks += more
                    count += n
                    if self.done:
                        break
                c, n = self._take([entry])
                chunks += c
                count += n
                if self.done:
                    break
            await write(chunks, count)

    def _take(self, entries: Iterable[Item]) -> tuple[list[bytes], int]:
        """Frames of ``entries`` not yet sent, in order, up to and including a final one."""
        chunks = []
        for entry in entries:
            if entry.seq <= self.last:
                continue
            chunks.append(entry.frame)
            self.last = entry.seq
            if entry.final:
                self.done = True
                break
        return chunks, len(chunks)

    async def _logs(self) -> dict[str, Any] | None:
        try:
            return await self.control.call(Logs(task_id=self.task_id, after=self.last, limit=PAGE))
        except CommandError as exc:
            if exc.code == "not_found":  # deleted meanwhile: nothing more will come
                self.done = True
            log.info("SSE %s: cannot read stored events after %d: %s", self.task_id, self.last, exc)
            return None
        except Unavailable as exc:
            # The supervisor is away: keep the stream (heartbeats go on) and retry later.
            log.info("SSE %s: cannot read stored events after %d: %s", self.task_id, self.last, exc)
            return None

    async def _catch_up(self, until: int | None = None) -> tuple[list[bytes], int]:
        """Stored events after ``self.last`` (up to ``until``), read from the supervisor."""
        chunks: list[bytes] = []
        while not self.done and (until is None or self.last < until):
            page = await self._logs()
            if page is None:
                break
            events = page.get("events", [])
            wanted = [item(e) for e in events if until is None or int(e.get("seq", 0)) <= until]
            more, _ = self._take(wanted)
            chunks += more
            if page.get("final") and self.last >= int(page.get("last_seq", 0)):
                self.done = True
            if not events or self.last >= int(page.get("last_seq", 0)):
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
