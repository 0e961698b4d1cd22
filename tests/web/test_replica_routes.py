"""Web's routing table (``web.replicas.Replicas.apply``): an entry without ``curve`` is an IPC
replica (as before TCP replicas existed), an entry with ``curve`` connects as that CURVE client
and gets answers from a CURVE-server ROUTER, a malformed ``curve`` drops its deployment."""

from __future__ import annotations

import asyncio
from typing import Any

import zmq

from protocol import serving as sv
from web.replicas import Replicas


def _route(task_id: str, replicas: list[dict[str, Any]]) -> dict[str, Any]:
    return {"task_id": task_id, "status": sv.READY, "version": 1, "max_batch_items": 8, "replicas": replicas}


def test_routes_with_and_without_curve_keys() -> None:
    server_public, server_secret = zmq.curve_keypair()
    client_public, client_secret = zmq.curve_keypair()
    curve = {"server": server_public.decode(), "public": client_public.decode(), "secret": client_secret.decode()}
    ctx: zmq.Context[Any] = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.setsockopt(zmq.CURVE_SERVER, 1)
    router.setsockopt(zmq.CURVE_SECRETKEY, server_secret)
    router.bind("tcp://127.0.0.1:*")
    address = router.getsockopt_string(zmq.LAST_ENDPOINT)

    async def main() -> None:
        replicas = Replicas(timeout=30.0, context=ctx)
        try:
            replicas.apply({
                "ipc": _route("t1", [{"id": "r1", "address": "ipc:///nonexistent/r1.sock"}]),
                "tcp": _route("t2", [{"id": "r2", "address": address, "curve": curve}]),
                "bad": _route("t3", [{"id": "r3", "address": address, "curve": {**curve, "secret": "short"}}]),
            })  # fmt: skip
            assert sorted(replicas.routes) == ["ipc", "tcp"]
            assert replicas.routes["ipc"].links[0].curve is None
            link = replicas.routes["tcp"].links[0]
            assert link.curve == sv.ReplicaCurve(**curve)

            async def answer() -> None:
                frames = await asyncio.to_thread(router.recv_multipart)
                router.send_multipart([frames[0], frames[1], b"200", b"{}"])

            responder = asyncio.ensure_future(answer())
            status, body = await replicas.request(replicas.routes["tcp"], sv.OP_PREDICT, b"", b"{}")
            await responder
            assert (status, body) == (200, b"{}")
        finally:
            replicas.close()

    try:
        asyncio.run(main())
    finally:
        router.close(linger=0)
        ctx.term()
