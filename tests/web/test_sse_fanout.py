"""The hub's SSE fan-out in-process, without a service (deterministic, no timing): each live event
is framed once whatever the number of subscribers, a waiting stream receives the hub's batch as
one write of the very same bytes object as every other client, without its task being woken;
a client that applies back-pressure gets its write finished by its own task while the others go
on; replay, live and the final event end to end through ``EventStream``."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from protocol import events as ev
from web import hub as hub_module
from web.hub import Hub, Item, Subscription
from web.sse import EventStream

TASK = "t-fanout"
FRAME = hub_module.frame  # the real one (tests count calls through a stand-in)


def event(seq: int, *, final: bool = False) -> dict[str, Any]:
    if final:
        return {"seq": seq, "timestamp": "2024-01-01T00:00:00.000Z", "kind": "status", "level": "INFO",
                "message": "completed", "status": "completed"}  # fmt: skip
    return {"seq": seq, "rseq": seq, "timestamp": "2024-01-01T00:00:00.000Z", "kind": "log", "level": "INFO",
            "message": f"event {seq}"}  # fmt: skip


def wire(seq: int, *, final: bool = False) -> list[bytes]:
    """One events-out message of one event."""
    return [TASK.encode(), ev.encode(event(seq, final=final))]  # type: ignore[arg-type]


def expected(*seqs: int, final_at: int | None = None) -> bytes:
    return b"".join(FRAME(event(s, final=s == final_at)) for s in seqs)


async def settle() -> None:
    """Let the loop run what is ready (the hub's flush, woken tasks) a few times over."""
    for _ in range(5):
        await asyncio.sleep(0)


class Recorder:
    """An ASGI ``send`` that records every message; ``hold`` makes the next body write wait."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.gate: asyncio.Event | None = None

    def hold(self) -> asyncio.Event:
        self.gate = asyncio.Event()
        return self.gate

    async def __call__(self, message: dict[str, Any]) -> None:
        if self.gate is not None and message["type"] == "http.response.body" and message["body"]:
            gate, self.gate = self.gate, None
            await gate.wait()  # back-pressure (uvicorn's drain)
        self.messages.append(message)

    @property
    def bodies(self) -> list[bytes]:
        return [m["body"] for m in self.messages if m["type"] == "http.response.body" and m["body"]]

    @property
    def ended(self) -> bool:
        return any(m["type"] == "http.response.body" and not m.get("more_body", False) for m in self.messages)


def counting_frames(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the hub's SSE encodes (``web.hub.frame``)."""
    calls = [0]

    def counted(e: Any) -> bytes:
        calls[0] += 1
        return FRAME(e)

    monkeypatch.setattr(hub_module, "frame", counted)
    return calls


@pytest.mark.asyncio
@pytest.mark.parametrize("clients", [1, 2, 200])
async def test_each_event_is_framed_once_and_the_same_bytes_reach_every_client(
    monkeypatch: pytest.MonkeyPatch, clients: int
) -> None:
    hub = Hub("inproc://unused")
    encodes = counting_frames(monkeypatch)
    subs = [hub.subscribe(TASK, 100) for _ in range(clients)]
    sends = [Recorder() for _ in subs]
    parked = [asyncio.create_task(sub.park(send)) for sub, send in zip(subs, sends, strict=True)]
    await settle()
    assert all(sub.parked for sub in subs)

    # Two messages received in one batch of the hub's socket: one flush, one write per client.
    hub._receive(wire(1))
    hub._receive(wire(2))
    await settle()
    assert encodes[0] == 2  # per event, not per client
    assert all(send.bodies == [expected(1, 2)] for send in sends)
    first = sends[0].bodies[0]
    assert all(send.bodies[0] is first for send in sends)  # the very same bytes object
    assert first == (b'id: 1\ndata: {"seq":1,"timestamp":"2024-01-01T00:00:00.000Z","kind":"log","level":"INFO",'
                     b'"message":"event 1"}\n\nid: 2\ndata: {"seq":2,"timestamp":"2024-01-01T00:00:00.000Z",'
                     b'"kind":"log","level":"INFO","message":"event 2"}\n\n')  # fmt: skip
    # Nobody's task was woken: the hub wrote for them.
    assert not any(task.done() for task in parked) and all(sub.parked for sub in subs)
    assert [sub.last for sub in subs] == [2] * clients
    assert (hub.received, hub.relayed, hub.sent) == (2, 2 * clients, 2 * clients)

    # A single event alone is written as its own frame bytes, again one object for all.
    hub._receive(wire(3))
    await settle()
    assert encodes[0] == 3
    third = sends[0].bodies[1]
    assert third == expected(3) and all(send.bodies[1] is third for send in sends)

    for task in parked:
        task.cancel()
    await asyncio.gather(*parked, return_exceptions=True)
    assert not any(sub.parked for sub in subs)


@pytest.mark.asyncio
async def test_a_busy_subscriber_buffers_the_shared_items(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stream whose task is busy (replaying, say) is not written to by the hub: it buffers the
    same ``Item`` objects the others got, for its task to take."""
    hub = Hub("inproc://unused")
    encodes = counting_frames(monkeypatch)
    busy = hub.subscribe(TASK, 100)
    waiting = hub.subscribe(TASK, 100)
    send = Recorder()
    parked = asyncio.create_task(waiting.park(send))
    await settle()
    hub._receive(wire(1))
    hub._receive(wire(2))
    await settle()
    assert encodes[0] == 2
    items = busy.take()
    assert [i.seq for i in items] == [1, 2] and all(isinstance(i, Item) for i in items)
    assert b"".join(i.frame for i in items) == send.bodies[0] == expected(1, 2)
    assert busy.take() == []
    parked.cancel()
    await asyncio.gather(parked, return_exceptions=True)


@pytest.mark.asyncio
async def test_a_subscriber_out_of_step_is_woken_not_written() -> None:
    """The hub writes only a run that follows the client's last event; anything else (a gap,
    events it already has) goes to its task, which sorts it out with the store."""
    hub = Hub("inproc://unused")
    sub = hub.subscribe(TASK, 100)
    sub.last = 5
    send = Recorder()
    parked = asyncio.create_task(sub.park(send))
    await settle()
    hub._receive(wire(4))
    hub._receive(wire(5))
    await settle()
    assert not parked.done() and send.bodies == []  # already had them: nothing to do
    hub._receive(wire(7))  # 6 is missing
    await settle()
    assert parked.done() and parked.result() is True and send.bodies == []
    assert [i.seq for i in sub.take()] == [7]


class FakeControl:
    """The stored log of one task (``logs`` answers), for ``EventStream``'s reads."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.events = events
        self.calls = 0

    def page(self, after: int) -> dict[str, Any]:
        rest = [e for e in self.events if e["seq"] > after]
        last = self.events[-1]["seq"] if self.events else 0
        final = bool(self.events) and ev.is_final(self.events[-1])
        return {"events": rest, "last_seq": last, "final": final}

    async def call(self, command: Any) -> dict[str, Any]:
        self.calls += 1
        return self.page(command.after)


async def open_streams(
    hub: Hub, control: FakeControl, n: int, heartbeat: float = 3600.0
) -> tuple[list[Subscription], list[Recorder], list[asyncio.Task[None]], list[asyncio.Event]]:
    subs, sends, tasks, gone = [], [], [], []
    for _ in range(n):
        sub = hub.subscribe(TASK, 3)
        stream = EventStream(TASK, 0, control.page(0), sub, control, heartbeat)  # type: ignore[arg-type]
        send = Recorder()
        disconnect = asyncio.Event()

        async def receive(disconnect: asyncio.Event = disconnect) -> dict[str, Any]:
            await disconnect.wait()
            return {"type": "http.disconnect"}

        subs.append(sub)
        sends.append(send)
        gone.append(disconnect)
        tasks.append(asyncio.create_task(stream({"type": "http"}, receive, send)))  # type: ignore[arg-type]
    await settle()
    return subs, sends, tasks, gone


@pytest.mark.asyncio
async def test_replay_then_live_with_a_slow_client_then_the_end() -> None:
    hub = Hub("inproc://unused")
    control = FakeControl([event(1), event(2)])
    subs, sends, tasks, _ = await open_streams(hub, control, 3)
    assert all(sub.parked for sub in subs)  # replayed 1-2, then waiting on the hub
    assert all(s.bodies == [expected(1, 2)] for s in sends)

    # Client 0 applies back-pressure on its next write: its task finishes that write; the hub
    # buffers for it meanwhile and goes on writing to the others.
    gate = sends[0].hold()
    hub._receive(wire(3))
    await settle()
    assert not subs[0].parked and subs[0].writing_since is not None  # its task waits on the write
    assert all(s.bodies[-1] == expected(3) for s in sends[1:])
    hub._receive(wire(4))
    await settle()
    assert [i.seq for i in subs[0]._items] == [4]
    gate.set()
    await settle()
    assert sends[0].bodies == [expected(1, 2), expected(3), expected(4)]
    assert subs[0].parked  # caught up: back on the hub's direct writes

    # The final event ends every stream, which leaves the hub.
    hub._receive(wire(5, final=True))
    await settle()
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    for send in sends:
        assert b"".join(send.bodies) == expected(1, 2, 3, 4, 5, final_at=5)
        assert send.ended
    assert hub.active == 0 and control.calls == 0
    assert hub.sent == 3 * 5


@pytest.mark.asyncio
async def test_a_final_event_the_client_was_slow_to_take_still_reaches_it() -> None:
    hub = Hub("inproc://unused")
    control = FakeControl([event(1)])
    subs, sends, tasks, _ = await open_streams(hub, control, 2)
    gate = sends[0].hold()
    hub._receive(wire(2))
    hub._receive(wire(3, final=True))
    await settle()
    assert sends[1].ended and not sends[0].ended and not tasks[0].done()
    gate.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    for send in sends:
        assert b"".join(send.bodies) == expected(1, 2, 3, final_at=3) and send.ended
    assert hub.active == 0 and hub.sent == 2 * 3


@pytest.mark.asyncio
async def test_a_client_too_far_behind_is_dropped_and_a_gap_is_read_from_the_store() -> None:
    hub = Hub("inproc://unused")
    control = FakeControl([event(1)])
    subs, sends, tasks, gone = await open_streams(hub, control, 2)
    # Client 0 stalls on its next write; the queue limit is 3 events.
    sends[0].hold()
    hub._receive(wire(2))
    await settle()
    for seq in (3, 4, 5, 6):
        hub._receive(wire(seq))
        await settle()
    assert subs[0].dropped and hub.dropped == 1
    await asyncio.wait_for(tasks[0], 5)  # its stream ended (cut off)
    assert b"".join(sends[0].bodies) == expected(1) and sends[0].ended

    # Client 1 misses 7-8 (the hub's socket lost them): they come from the store, in order.
    control.events += [event(7), event(8)]
    hub._receive(wire(9))
    await settle()
    assert b"".join(sends[1].bodies) == expected(1, 2, 3, 4, 5, 6, 7, 8, 9) and control.calls == 1
    gone[1].set()  # the client disconnects
    await asyncio.wait_for(tasks[1], 5)
    assert hub.active == 0
