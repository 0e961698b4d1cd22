"""A TCP replica's side of ``protocol.serving`` "Where a replica listens".

A TCP replica (placed by Ray) binds as a CURVE server with its own secret key; a ZAP handler
(``Zap``: a thread on the replica's own context, so that a handshake is answered while a batch
runs) lets in ``curve_client_key`` only; once bound it writes the endpoint (its node's address,
the port the kernel gave) to ``ENDPOINT_FILE`` in its task directory (``write_endpoint``),
where the supervisor reads it.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import zmq
import zmq.utils.z85

#: Where libzmq asks a socket's context for authentication (RFC 27/ZAP), and this socket's domain.
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_DOMAIN = b"rfuav-replica"


class Zap:
    """The ZAP handler of a TCP replica's context: a CURVE client with the key ``allowed`` (Z85)
    gets in, any other is refused (its handshake fails: nothing it sends arrives). A daemon
    thread; it ends when the context is terminated."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], allowed: str) -> None:
        self._allowed = zmq.utils.z85.decode(allowed.encode())
        self._sock = ctx.socket(zmq.REP)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.bind(ZAP_ENDPOINT)
        self.refused = 0
        self._thread = threading.Thread(target=self._run, name="rfuav-replica-zap", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        sock = self._sock
        try:
            while True:
                msg = sock.recv_multipart()
                request_id = msg[1] if len(msg) > 1 else b""
                ok = (
                    len(msg) == 7 and msg[0] == b"1.0" and msg[2] == ZAP_DOMAIN and msg[5] == b"CURVE"
                    and msg[6] == self._allowed
                )  # fmt: skip
                if not ok:
                    self.refused += 1
                sock.send_multipart(
                    [b"1.0", request_id, b"200", b"OK", b"", b""] if ok
                    else [b"1.0", request_id, b"400", b"key not allowed", b"", b""]
                )  # fmt: skip
        except zmq.ContextTerminated:
            pass
        finally:
            sock.close(linger=0)

    def join(self) -> None:
        self._thread.join(timeout=5)


def write_endpoint(path: Path, endpoint: str) -> None:
    """``endpoint`` into ``path``, atomically (a reader sees all of it or no file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(endpoint + "\n")
    os.replace(tmp, path)
