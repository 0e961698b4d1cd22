"""How ``EventsOut.publish`` frames what was stored, on a real XPUB and a real SUB: consecutive
short items of a task packed into one message, a long run alone and as stored, in order."""

from __future__ import annotations

from pathlib import Path

import orjson
import zmq
import zmq.asyncio

from protocol import events as ev
from supervisor.events_out import ALONE_BYTES, EventsOut


def _event(seq: int, size: int = 10) -> bytes:
    return orjson.dumps({"seq": seq, "kind": "log", "message": "m" * size})


def test_short_items_are_packed_and_a_long_run_goes_alone(tmp_path: Path) -> None:
    ctx = zmq.asyncio.Context()
    address = f"ipc://{tmp_path / 'out.sock'}"
    out = EventsOut(ctx, address)
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(address)
    pub = out._pub
    assert pub.poll(10_000, zmq.POLLIN)  # the subscription arrived (XPUB_VERBOSER)
    pub.recv()
    long_run = ev.pack([_event(seq, 1000) for seq in range(3, 3 + ALONE_BYTES // 1000 + 1)])
    assert len(long_run) >= ALONE_BYTES
    last = 3 + ALONE_BYTES // 1000
    items = [
        (b"a", _event(1)),
        (b"a", _event(2)),
        (b"a", long_run),
        (b"a", _event(last + 1)),
        (b"b", _event(1)),
        (b"a", _event(last + 2)),
    ]
    out.publish(items)
    got = []
    for _ in range(5):
        assert sub.poll(10_000)
        got.append(sub.recv_multipart())
    assert got == [
        [b"a", ev.pack([_event(1), _event(2)])],
        [b"a", long_run],
        [b"a", _event(last + 1)],
        [b"b", _event(1)],
        [b"a", _event(last + 2)],
    ]
    seqs = [orjson.loads(e)["seq"] for m in got if m[0] == b"a" for e in ev.unpack(m)[1:]]
    assert seqs == list(range(1, last + 3))
    sub.close(linger=0)
    out.close()
    ctx.term()
