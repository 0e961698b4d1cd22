"""``supervisor.ray.events_tcp`` in-process, on real sockets (no Ray): the supervisor's keypair
file, the endpoint, and the CURVE-server SUB with its ZAP handler against runner-like XPUBs."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.asyncio
from zmq.utils.monitor import recv_monitor_message

from supervisor.ray.events_tcp import KEY_FILE, EventsTcp, endpoint_of, server_keys

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]


async def test_the_server_keypair_is_made_once_0600_and_replaced_when_others_may_read_it(tmp_path: Path) -> None:
    public, secret = server_keys(tmp_path)
    path = tmp_path / KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(public) == len(secret) == 40
    assert server_keys(tmp_path) == (public, secret)  # kept across restarts
    os.chmod(path, 0o644)
    assert server_keys(tmp_path) != (public, secret)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_endpoints() -> None:
    assert endpoint_of("10.0.0.5:5557") == "tcp://10.0.0.5:5557"
    assert endpoint_of("127.0.0.1:0") == "tcp://127.0.0.1:*"
    assert endpoint_of("[::1]:5557") == endpoint_of("::1:5557") == "tcp://[::1]:5557"


async def test_a_wildcard_address_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="name an address of this host"):
        EventsTcp("0.0.0.0:0", tmp_path, lambda batch: None).open()


async def _connect(endpoint: str, keys: tuple[str, str, str] | None) -> tuple[Any, str]:
    """A runner-like XPUB (CURVE client with ``keys`` when given) and its handshake's outcome."""
    ctx = zmq.asyncio.Context.instance()
    sock = ctx.socket(zmq.XPUB)
    sock.setsockopt(zmq.LINGER, 0)
    if keys is not None:
        sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = (k.encode() for k in keys)
    monitor = sock.get_monitor_socket()
    sock.connect(endpoint)
    outcome = "none"
    while await monitor.poll(10_000):
        event = zmq.Event((await recv_monitor_message(monitor))["event"])
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED or event.name.startswith("HANDSHAKE_FAILED"):
            outcome = event.name
            break
    sock.disable_monitor()
    monitor.close(linger=0)
    return sock, outcome


async def test_only_a_live_jobs_key_gets_in_and_only_for_its_own_task(tmp_path: Path) -> None:
    got: list[list[bytes]] = []
    arrived = asyncio.Event()

    def deliver(batch: list[list[bytes]]) -> None:
        got.extend(batch)
        arrived.set()

    tcp = EventsTcp("127.0.0.1:0", tmp_path, deliver)
    tcp.open()
    try:
        keys = tcp.admit("task-a")
        curve = (keys.server_public, keys.public, keys.secret)
        sock, outcome = await _connect(tcp.endpoint, curve)
        assert outcome == "HANDSHAKE_SUCCEEDED"
        assert await sock.poll(10_000)  # the supervisor's subscription
        await sock.recv()
        await sock.send_multipart([b"task-b", b"{}"])  # another task's: dropped
        await sock.send_multipart([b"task-a", b"e1", b"e2"])
        await asyncio.wait_for(arrived.wait(), 10)
        assert got == [[b"task-a", b"e1", b"e2"]] and (tcp.events, tcp.foreign, tcp.messages) == (2, 1, 2)
        sock.close(linger=0)

        # Which failure the client's monitor names depends on timing (the server's error
        # command, or its disconnect first): any failed handshake; the server counts refusals.
        plain, outcome = await _connect(tcp.endpoint, None)
        plain.close(linger=0)
        assert outcome.startswith("HANDSHAKE_FAILED") and tcp.refused == 0  # no CURVE: not even asked
        tcp.forget("task-a")
        again, outcome = await _connect(tcp.endpoint, curve)
        again.close(linger=0)
        assert outcome.startswith("HANDSHAKE_FAILED") and tcp.refused >= 1
        assert tcp.describe()["jobs"] == 0
    finally:
        await tcp.close()
