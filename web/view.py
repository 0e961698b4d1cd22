"""Web's read view of task records: status reads and task lists answered without a round trip.

The supervisor is the only writer; it publishes every committed record change on events-out
(``protocol.records``; ``supervisor.records``). This process keeps what it needs of them:

- **List, then watch.** At start, after a reconnect and after any lost change, the view asks for a
  snapshot (``view``: the newest ``size`` tasks and the live ones, as far as one reply holds them)
  while it buffers what is published meanwhile, then applies the buffered changes past the
  snapshot's position. Changes are numbered (``rev``) within the supervisor's life (``epoch``): a
  jump, or a new epoch, means one was missed, and the view takes a snapshot again. Until it is
  back, reads ask the supervisor.
- **Bounded.** It holds a *window* of the newest tasks (every task with ``ord`` at or above
  ``floor``: the newest ``size``, or all of them while there are fewer), the live tasks below it
  and a bounded LRU of other final tasks that were read or changed. A read of anything else asks
  the supervisor (and remembers the answer); so does a list page the window cannot answer for
  certain.
- **Your writes, your reads.** Every control reply carries the position it was answered at
  (``protocol.replies``); ``caught_up`` waits (briefly; the changes were published before the
  reply was sent) until the view has applied that far, so a write made through this process is in
  its next read.
- **Live or not at all.** A disconnect of the events socket (the supervisor stopped) or a silence
  longer than ``LEASE`` (no heartbeat) stops reads from the view at once: they go to the
  supervisor, which answers, or is down and the read is a 503, as without a view.

Answers are built by the same code as the supervisor's (``TaskRecord.response``,
``protocol.records.totals``), from the same fields, so the bodies are identical.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

import orjson

from protocol import commands as cmd
from protocol.records import HEARTBEAT_SECONDS, from_fields, totals
from protocol.replies import CommandError, ErrorCode, Position
from protocol.tasks import LIVE_STATUSES, TaskRecord
from web.control import ControlClient
from web.errors import Unavailable

log = logging.getLogger(__name__)

#: Seconds without a message (changes or heartbeat) after which the view is not trusted.
LEASE = 3 * HEARTBEAT_SECONDS
#: Seconds a reply's caller waits for the view to reach the reply's position.
CATCH_UP_WAIT = 1.0
#: Messages buffered while a snapshot is on its way (more: take the snapshot again).
BUFFER = 10_000
#: Deleted ids remembered (so that an older answer cannot bring one back).
TOMBSTONES = 10_000


class Feed(Protocol):
    """Where the records arrive (``web.hub.Hub``)."""

    def drain(self) -> None:
        """Take what has been received."""

    def check_connection(self) -> None:
        """Run the disconnect callbacks for a disconnect seen but not handled yet."""


class Entry:
    """One held task: its record, its place in submission order and the position it is as of."""

    __slots__ = ("body", "ord", "record", "rev")

    def __init__(self, ord_: int, record: TaskRecord, rev: int) -> None:
        self.ord = ord_
        self.record = record
        self.rev = rev
        #: The encoded answer, while it does not depend on the time (``View.encoded``).
        self.body: bytes | None = None


class View:
    """The read view of one web process (see the module docstring)."""

    def __init__(self, control: ControlClient, size: int, *, feed: Feed | None = None) -> None:
        """``size``: final tasks held in the window, and in the LRU beside it. ``feed``: the
        events socket the records arrive on (``web.hub.Hub``), looked at before a read."""
        self.control = control
        self.size = max(1, size)
        self._feed = feed
        self.epoch: str | None = None
        self.rev = 0
        self.ready = False
        #: Every task with ``ord >= floor`` is held (0: every task).
        self.floor = 0
        self.counts: dict[str, dict[str, int]] = {}
        self._entries: dict[str, Entry] = {}
        #: Ascending ``ord`` of the held tasks at or above ``floor``, and whose they are.
        self._ords: list[int] = []
        self._by_ord: dict[int, str] = {}
        #: Held final tasks below the floor, least recently used first.
        self._extra: OrderedDict[str, None] = OrderedDict()
        self._deleted: OrderedDict[str, int] = OrderedDict()
        self._heard = 0.0
        #: Messages received while a snapshot is on its way (None: not synchronising).
        self._buffer: list[dict[str, Any]] | None = None
        self._sync: asyncio.Task[None] | None = None
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self.hits = 0
        self.misses = 0
        self.resyncs = 0

    # -- the feed ----------------------------------------------------------------------
    def start(self) -> None:
        self._resync()

    def stop(self) -> None:
        if self._sync is not None:
            self._sync.cancel()
        self.invalidate()

    def on_message(self, payload: bytes) -> None:
        """One ``protocol.records`` message from events-out (the hub's topic callback)."""
        try:
            msg = orjson.loads(payload)
            if not isinstance(msg, dict) or not isinstance(msg.get("records"), list):
                raise ValueError("not a records message")
        except ValueError as exc:
            log.warning("dropping a malformed task records message: %s", exc)
            return
        self._heard = time.monotonic()
        if self._buffer is not None:
            if len(self._buffer) >= BUFFER:
                self._buffer.clear()
                self._resync()
            self._buffer.append(msg)
            return
        if not self.ready or not self._apply(msg):
            # The snapshot is asked for after this message was published: it includes it.
            self.invalidate()
            self._resync()

    def invalidate(self) -> None:
        """Stop answering from the view (the supervisor went away, or a change was missed)."""
        self.ready = False
        self._clear()
        self._release(None)

    def _clear(self) -> None:
        self.epoch = None
        self._entries.clear()
        self._ords.clear()
        self._by_ord.clear()
        self._extra.clear()

    def _resync(self) -> None:
        if self._sync is None or self._sync.done():
            self._buffer = []
            self._sync = asyncio.get_running_loop().create_task(self._snapshot())

    async def _snapshot(self) -> None:
        self.resyncs += 1
        try:
            data = await self.control.call(cmd.View(limit=self.size))
        except (Unavailable, CommandError) as exc:
            # The next message (a heartbeat within a second once the supervisor is back) retries.
            log.info("task records snapshot not taken (%s): reads go to the supervisor", exc)
            self._buffer = None
            return
        try:
            self._load(data)
        except (KeyError, TypeError, ValueError) as exc:
            log.error("malformed task records snapshot (%s): reads go to the supervisor", exc)
            self._clear()
            self._buffer = None
            return
        buffered, self._buffer = self._buffer or [], None
        for msg in buffered:
            if not self._apply(msg):
                self.invalidate()
                self._resync()
                return
        self.ready = True
        self._heard = time.monotonic()  # a snapshot is news as fresh as a heartbeat
        self._release(self.rev)

    def _load(self, data: dict[str, Any]) -> None:
        self._clear()
        self.epoch = str(data["epoch"])
        self.rev = int(data["rev"])
        self.floor = int(data["floor"])
        self.counts = data["counts"]
        for fields in data["records"]:
            self._put(fields, self.rev)

    def _apply(self, msg: dict[str, Any]) -> bool:
        """Apply one message; False when it shows a change was missed (or a new epoch)."""
        if msg.get("epoch") != self.epoch:
            return False
        records: list[dict[str, Any]] = msg["records"]
        last = int(msg["rev"])
        first = last - len(records) + 1
        if last <= self.rev:
            return True  # old news (the snapshot had it)
        if first > self.rev + 1:
            return False  # a change between was lost
        for n in range(self.rev + 1 - first, len(records)):
            try:
                self._put(records[n], first + n)
            except ValueError as exc:
                log.warning("dropping a malformed task record: %s", exc)
        self.rev = last
        self.counts = msg["counts"]
        self._release(last)
        return True

    def _put(self, fields: dict[str, Any], rev: int) -> None:
        task_id = str(fields["task_id"])
        entry = self._entries.get(task_id)
        if entry is not None and entry.rev > rev:
            return  # an answer already gave a newer state
        if fields.get("deleted"):
            self._forget(task_id)
            self._deleted[task_id] = rev
            if len(self._deleted) > TOMBSTONES:
                self._deleted.popitem(last=False)
            return
        ord_, record = from_fields(fields)
        if entry is not None:
            entry.record, entry.rev, entry.body = record, rev, None
            if task_id in self._extra:
                self._extra.move_to_end(task_id)
            elif ord_ < self.floor and record.status not in LIVE_STATUSES:
                self._hold_extra(task_id)
            return
        self._entries[task_id] = Entry(ord_, record, rev)
        if ord_ >= self.floor:
            bisect.insort(self._ords, ord_)
            self._by_ord[ord_] = task_id
            self._trim()
        elif record.status not in LIVE_STATUSES:
            self._hold_extra(task_id)

    def _forget(self, task_id: str) -> None:
        entry = self._entries.pop(task_id, None)
        if entry is None:
            return
        self._extra.pop(task_id, None)
        if self._by_ord.get(entry.ord) == task_id:
            del self._by_ord[entry.ord]
            i = bisect.bisect_left(self._ords, entry.ord)
            if i < len(self._ords) and self._ords[i] == entry.ord:
                del self._ords[i]

    def _trim(self) -> None:
        """Keep the window to the newest ``size`` tasks: the oldest leave it (the floor rises);
        a live one stays held below it until it ends."""
        while len(self._ords) > self.size:
            ord_ = self._ords.pop(0)
            task_id = self._by_ord.pop(ord_)
            self.floor = ord_ + 1
            if self._entries[task_id].record.status not in LIVE_STATUSES:
                self._hold_extra(task_id)

    def _hold_extra(self, task_id: str) -> None:
        self._extra[task_id] = None
        self._extra.move_to_end(task_id)
        while len(self._extra) > self.size:
            old, _ = self._extra.popitem(last=False)
            self._entries.pop(old, None)

    # -- writes become visible ------------------------------------------------------------
    async def caught_up(self, at: Position) -> None:
        """Return once the view reflects every change up to ``at`` (a reply's position), or
        once it is not answering reads anyway."""
        epoch, rev = at
        if not self.ready or epoch != self.epoch or self.rev >= rev:
            return
        if self._feed is not None:
            self._feed.drain()  # published before the reply: usually received already
            if not self.ready or self.rev >= rev:
                return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((rev, fut))
        try:
            await asyncio.wait_for(fut, CATCH_UP_WAIT)
        except TimeoutError:
            log.warning("task records did not reach %d within %.1f s: taking a snapshot again", rev, CATCH_UP_WAIT)
            self.invalidate()
            self._resync()

    def _release(self, rev: int | None) -> None:
        """Wake the waiters that ``rev`` satisfies (None: all of them)."""
        if not self._waiters:
            return
        keep = []
        for want, fut in self._waiters:
            if rev is None or want <= rev:
                if not fut.done():
                    fut.set_result(None)
            else:
                keep.append((want, fut))
        self._waiters = keep

    # -- reads -----------------------------------------------------------------------------
    @property
    def live(self) -> bool:
        """Whether reads may be answered from the view now. A disconnect the feed has seen but
        the loop has not handled yet counts (a read right after the supervisor died is a 503,
        never an answer from a view nobody keeps current)."""
        if self._feed is not None and self.ready:
            self._feed.check_connection()
        return self.ready and time.monotonic() - self._heard <= LEASE

    def get(self, task_id: str, task_type: str | None) -> dict[str, Any] | None:
        """The task's ``TaskResponse``; None when the view cannot answer (ask the supervisor).
        ``CommandError`` (not found) for a task of another type, as the supervisor answers."""
        entry = self._entry(task_id, task_type)
        return None if entry is None else entry.record.response(time.time())

    def encoded(self, task_id: str, task_type: str | None, encode: Callable[[Any], bytes]) -> bytes | None:
        """``encode(get(...))``, kept until the record changes when the answer does not depend
        on the time (a task not started yet, or ended: only a running task's duration moves)."""
        entry = self._entry(task_id, task_type)
        if entry is None:
            return None
        if entry.body is not None:
            return entry.body
        record = entry.record
        body = encode(record.response(time.time()))
        if record.started_at is None or record.finished_at is not None:
            entry.body = body
        return body

    def _entry(self, task_id: str, task_type: str | None) -> Entry | None:
        if not self.live:
            return None
        entry = self._entries.get(task_id)
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        if task_id in self._extra:
            self._extra.move_to_end(task_id)
        if task_type is not None and entry.record.task_type != task_type:
            raise CommandError(ErrorCode.NOT_FOUND, f"task {task_id!r} not found")
        return entry

    def remember(self, fields: dict[str, Any]) -> None:
        """Hold a task the supervisor just answered for (a miss). The reply's position was
        reached before its caller got it (``caught_up``), so any later change of the task is
        held already; a task held or deleted meanwhile is left as the view has it."""
        if not self.live:
            return
        task_id = str(fields.get("task_id"))
        if task_id in self._entries or task_id in self._deleted:
            return
        try:
            self._put(fields, self.rev)
        except ValueError as exc:
            log.warning("not holding a malformed task record: %s", exc)

    def list(self, task_type: str | None, status: str | None, limit: int, cursor: int | None) -> dict[str, Any] | None:
        """One page as the supervisor's ``list`` answers it; None when the window cannot tell
        for certain (the page reaches below ``floor``)."""
        if not self.live or cmd.List(task_type, status, limit, cursor).problem() is not None:
            return None  # the supervisor answers (a 400)
        ords, by_ord, entries = self._ords, self._by_ord, self._entries
        i = (bisect.bisect_left(ords, cursor) if cursor is not None else len(ords)) - 1
        page: list[Entry] = []
        while i >= 0 and len(page) <= limit:
            entry = entries[by_ord[ords[i]]]
            record = entry.record
            if (task_type is None or record.task_type == task_type) and (status is None or record.status == status):
                page.append(entry)
            i -= 1
        if len(page) <= limit and self.floor > 0:
            self.misses += 1
            return None  # older tasks may match too: only the store knows
        self.hits += 1
        now = time.time()
        return {
            "tasks": [entry.record.response(now) for entry in page[:limit]],
            "totals": totals(self.counts, task_type, status),
            "next_cursor": page[limit - 1].ord if len(page) > limit else None,
        }

    def figures(self) -> dict[str, int]:
        return {
            "held": len(self._entries),
            "hits": self.hits,
            "misses": self.misses,
            "resyncs": self.resyncs,
        }
