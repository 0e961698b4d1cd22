"""Time every control answer while the daemon carries the load that once stalled it.

The load (hardening issue, finding 1): one job floods events as fast as it can, one fills its
memory up to its cgroup limit (and is OOM-killed there), and a burst of submissions arrives —
while a probe on a DEALER of its own asks ``health`` and ``get`` back to back and records how
long each answer took. Used by ``tests/supervisor/test_control_plane.py`` (a generous bound)
and ``benchmarks/control.py`` (the real figures).

Usage::

    result = control_under_load(sup, events=50_000, size=512, burst=200, memory_mb=256)
    result["max_s"], result["p99_s"], result["answers"], result["flood"], result["oom"]

``sup`` is a running ``tests.support.supervisor.SupervisorProcess`` whose
``RFUAV_JOB_MEMORY_MB`` is ``memory_mb`` and whose training limit is 0 (the burst is training
tasks that stay queued: submitting is what is measured, not training).
"""

from __future__ import annotations

import statistics
import threading
import time
import uuid
from typing import Any

import orjson
import zmq

from protocol.codec import PROTOCOL_VERSION
from protocol.replies import CommandError, ErrorCode
from tests.support.supervisor import SupervisorProcess

#: A probe request unanswered for this long counts as this long (and ends the probe).
PROBE_TIMEOUT = 30.0


class ControlProbe(threading.Thread):
    """Asks ``health`` and ``get`` alternately, one at a time, until ``stop()``; ``latencies``
    holds each answer's round trip in seconds."""

    def __init__(self, endpoint: str, task_id: str) -> None:
        super().__init__(daemon=True)
        self.endpoint = endpoint
        self.task_id = task_id
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(PROBE_TIMEOUT + 5)

    def run(self) -> None:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.endpoint)
        try:
            n = 0
            while not self._stop_event.is_set():
                kind = "health" if n % 2 == 0 else "get"
                n += 1
                request_id = uuid.uuid4().hex
                message: dict[str, Any] = {"v": PROTOCOL_VERSION, "id": request_id, "kind": kind}
                if kind == "get":
                    message["task_id"] = self.task_id
                start = time.perf_counter()
                sock.send(orjson.dumps(message))
                if not sock.poll(int(PROBE_TIMEOUT * 1000)):
                    self.latencies.append(PROBE_TIMEOUT)
                    self.errors.append(f"{kind}: no answer within {PROBE_TIMEOUT} s")
                    return
                reply = orjson.loads(sock.recv())
                self.latencies.append(time.perf_counter() - start)
                if reply.get("id") != request_id or not reply.get("ok"):
                    self.errors.append(f"{kind}: {reply}")
                # Pace the probe a little (it would otherwise be a load of its own).
                self._stop_event.wait(0.005)
        finally:
            sock.close(linger=0)
            ctx.term()


def control_under_load(
    sup: SupervisorProcess, *, events: int, size: int, burst: int, memory_mb: int, timeout: float = 240.0
) -> dict[str, Any]:
    """Run the load on ``sup`` (see the module docstring) and return the probe's figures and
    how the two jobs ended."""
    flood = sup.submit(params={"events": events, "size": size})
    probe = ControlProbe(sup.settings.addresses.control, flood)
    probe.start()
    oom = sup.submit(params={"memory_mb": memory_mb, "sleep": 30})
    queued = [sup.submit(job="training", params={"num_epochs": 1}) for _ in range(burst)]
    flood_task = sup.wait_final(flood, timeout=timeout)
    oom_task = sup.wait_final(oom, timeout=timeout)
    probe.stop()
    health = sup.call("health")
    for task_id in queued:
        try:
            sup.call("cancel", task_id=task_id)
        except CommandError as exc:  # started once the two jobs ended, and failed (no data)
            if exc.code != ErrorCode.CONFLICT:
                raise
    lat = sorted(probe.latencies)
    return {
        "answers": len(lat),
        "max_s": lat[-1] if lat else float("nan"),
        "p99_s": lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else float("nan"),
        "p50_s": statistics.median(lat) if lat else float("nan"),
        "errors": probe.errors,
        "flood": flood_task,
        "oom": oom_task,
        "events_stored": len(sup.logs(flood)),
        "loop_lag_max_s": health.get("loop_lag_max_seconds"),
    }
