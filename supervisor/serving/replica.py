"""One replica process of a deployment: started through the executor like any job, probed over
its own socket (``protocol.serving`` ``status``: readiness and figures), stopped by SIGTERM
(it drains), then SIGKILL after the grace period.

A replica is ready once it answers ``status`` (it binds only after its model is loaded and
warm). Its exit is reported by ``wait``; the last line of its ``stderr.log`` says why when it
failed (``replica failed: ...``).

A TCP replica (``protocol.serving`` "Where a replica listens") has no ``address`` until it wrote
its endpoint (``locate``: read from its task directory, shared with its node); the probe connects
to it as the CURVE client of its ``curve`` keys, as web does.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import zmq
import zmq.asyncio

from protocol import serving as sv
from supervisor.executor import ExitInfo, JobHandle

log = logging.getLogger(__name__)

#: Seconds one ``status`` probe waits for its answer.
PROBE_TIMEOUT = 2.0

_ids = itertools.count(1)

STARTING, READY, DRAINING, EXITED = "starting", "ready", "draining", "exited"


@dataclass(eq=False)
class Replica:
    """A replica process and what the supervisor knows of it."""

    replica_id: str
    version: int
    address: str
    device: str
    task_dir: Path
    handle: JobHandle | None = None
    #: A TCP replica's keys (its public key, the client keypair it lets in); None: IPC.
    curve: sv.ReplicaCurve | None = None
    state: str = STARTING
    started_at: float = field(default_factory=time.time)
    ready_at: float | None = None
    status: sv.ReplicaStatus | None = None
    exit: ExitInfo | None = None
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    _probe: zmq.asyncio.Socket | None = None

    @property
    def pid(self) -> int | None:
        return self.handle.pid if self.handle is not None else None

    def view(self, restarts: int) -> dict[str, Any]:
        """The contract's replica entry (plus ``id`` and ``version``)."""
        return {
            "pid": self.pid,
            "device": self.device,
            "status": self.state,
            "restarts": restarts,
            "id": self.replica_id,
            "version": self.version,
        }

    def locate(self) -> bool:
        """Whether the replica's address is known (a TCP replica's: once it wrote its endpoint)."""
        if not self.address:
            try:
                endpoint = (self.task_dir / sv.ENDPOINT_FILE).read_text().strip()
            except OSError:
                return False
            if not endpoint.startswith("tcp://"):
                log.warning("replica %s: ignoring endpoint %r", self.replica_id, endpoint[:100])
                return False
            self.address = endpoint
        return True

    def route(self) -> dict[str, Any]:
        """This replica's entry in the routing table (``curve`` only for a TCP replica)."""
        entry: dict[str, Any] = {"id": self.replica_id, "address": self.address}
        if self.curve is not None:
            entry["curve"] = {"server": self.curve.server, "public": self.curve.public, "secret": self.curve.secret}
        return entry

    async def probe(self, ctx: zmq.asyncio.Context) -> sv.ReplicaStatus | None:
        """Ask the replica for its ``status``; None when it does not answer in time (or a TCP
        replica did not say where it listens yet)."""
        if self._probe is None:
            if not self.locate():
                return None
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.IMMEDIATE, 1)
            if self.curve is not None:
                sock.setsockopt(zmq.CURVE_SERVERKEY, self.curve.server.encode())
                sock.setsockopt(zmq.CURVE_PUBLICKEY, self.curve.public.encode())
                sock.setsockopt(zmq.CURVE_SECRETKEY, self.curve.secret.encode())
                sock.setsockopt(zmq.IPV6, 1)  # a node's address may be IPv6 (IPv4 works as well)
            sock.connect(self.address)
            self._probe = sock
        sock = self._probe
        request_id = f"p{next(_ids)}".encode()
        try:
            await sock.send_multipart([request_id, sv.OP_STATUS, b"", b""], flags=zmq.NOBLOCK)
        except zmq.Again:
            return None  # not bound yet: still loading
        deadline = time.monotonic() + PROBE_TIMEOUT
        while (left := deadline - time.monotonic()) > 0:
            if not await sock.poll(int(left * 1000) + 1):
                break
            frames = await sock.recv_multipart()
            if len(frames) == 3 and frames[0] == request_id and frames[1] == b"200":
                try:
                    self.status = sv.as_status(orjson.loads(frames[2]))
                except (ValueError, TypeError) as exc:
                    log.warning("replica %s: malformed status answer: %s", self.replica_id, exc)
                    return None
                return self.status
        # No answer: drop the socket (a late answer must not be read as the next one's).
        self.close_probe()
        return None

    def close_probe(self) -> None:
        if self._probe is not None:
            self._probe.close(linger=0)
            self._probe = None

    def failure(self) -> str:
        """Why the replica ended, from its exit and the last line of its ``stderr.log``."""
        info = self.exit
        if info is None:
            return "replica lost"
        if info.oom_killed:
            how = f"killed by the kernel for using more than its memory limit of {info.memory_limit_mb} MiB"
        elif info.code is not None and info.code < 0:
            how = f"killed by signal {-info.code}"
        else:
            how = f"exit code {info.code}"
        last = _last_line(self.task_dir / "stderr.log")
        if last.startswith("replica failed:"):
            return f"{last[len('replica failed:') :].strip()} ({how})"
        return how


def _last_line(path: Path, size: int = 4096) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, os.fstat(fh.fileno()).st_size - size))
            lines = fh.read().decode("utf-8", "replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1][:500] if lines else ""
