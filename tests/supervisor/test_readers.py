"""The events-in reader in process, on real ZeroMQ sockets: ``Drained`` (what the reaper waits
for before it reads a journal's tail) against the socket's edge-triggered descriptor."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import zmq

from protocol import events as ev
from supervisor.readers import Drained, serve_events

pytestmark = pytest.mark.timeout(60)


class Ingested:
    """Stands in for the pipeline: records what the reader hands it."""

    def __init__(self) -> None:
        self.messages: list[list[bytes]] = []
        self.arrived = asyncio.Event()

    def ingest(self, batch: list[list[bytes]]) -> int:
        self.messages.extend(batch)
        self.arrived.set()
        return sum(len(m) - 1 for m in batch)


@pytest.mark.asyncio
async def test_a_waiter_whose_look_took_the_descriptors_signal_still_gets_the_queue_read() -> None:
    """Looking at ``ZMQ_EVENTS`` takes the descriptor's signal of what is queued. A message read
    by nothing but such a look (here ``poll`` on the socket, as ``Drained.wait`` looks) must
    still be ingested once ``wait`` returns, and the reader must go on reading after it."""
    ctx: zmq.Context[Any] = zmq.Context()
    folder = Path(tempfile.mkdtemp(prefix="rd", dir="/tmp"))
    sub = ctx.socket(zmq.SUB)
    pub = ctx.socket(zmq.XPUB)
    pipeline = Ingested()
    drained = Drained()
    reader: asyncio.Future[None] | None = None
    try:
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.bind(f"ipc://{folder / 'in.sock'}")
        pub.connect(f"ipc://{folder / 'in.sock'}")
        deadline = time.monotonic() + 10
        while not pub.poll(10):  # the SUB sends its subscription once it has seen the new pipe
            sub.getsockopt(zmq.EVENTS)  # (commands are processed when the socket is used)
            assert time.monotonic() < deadline, "no subscription"
        assert pub.recv()[:1] == b"\x01"
        reader = asyncio.ensure_future(serve_events(sub, pipeline, drained))  # type: ignore[arg-type]
        await asyncio.sleep(0)  # the reader's first look: nothing queued yet
        pub.send_multipart([b"t1", ev.pack([b'{"rseq":1}', b'{"rseq":2}'])])
        # Wait for it without the loop: the signal is taken before the loop's reader sees it.
        assert sub.poll(10_000, zmq.POLLIN)
        await asyncio.wait_for(drained.wait(30.0), 40.0)
        assert pipeline.messages == [[b"t1", b'{"rseq":1}', b'{"rseq":2}']]
        await asyncio.wait_for(drained.wait(30.0), 40.0)  # nothing queued: at once
        pipeline.arrived.clear()
        pub.send_multipart([b"t1", b'{"rseq":3}'])  # and the reader still reads
        await asyncio.wait_for(pipeline.arrived.wait(), 30.0)
        assert pipeline.messages[1:] == [[b"t1", b'{"rseq":3}']]
        assert drained._waiters == []
    finally:
        if reader is not None:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        pub.close(linger=0)
        sub.close(linger=0)
        ctx.term()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.asyncio
async def test_a_waiter_that_gives_up_leaves_nothing_behind() -> None:
    drained = Drained()
    drained.pending = lambda: True  # queued, and nobody reading
    await drained.wait(0.01)
    assert drained._waiters == []
