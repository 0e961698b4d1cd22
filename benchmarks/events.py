"""Event throughput and latency: diagnostic runner → supervisor → subscriber, 1 KiB events.

Two paths, the same runner (``python -m runner spec.json``, the diagnostic job) and payloads:

- baseline: the runner's XPUB straight into a bare SUB (no supervisor): what the runner
  itself can publish;
- service: the runner into the real supervisor (validate, number, store in SQLite, publish)
  and out to a SUB on events-out.

Printed: events/s and events lost for a burst of ``N`` events, and p50/p99 end-to-end latency
at 1,000 events/s (the diagnostic job stamps ``sent_ns`` in each event); the service/baseline
ratio of each. Goals: ≥ 50,000 events/s, 0 lost, p99 ≤ 5 ms.

    python -m benchmarks.events [--events 100000] [--size 1024]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import psutil
import zmq

from protocol.events import is_final
from protocol.jobs import JobSpec
from tests.support.supervisor import SupervisorProcess

REPO = Path(__file__).resolve().parents[1]


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def _collect(sock: zmq.Socket[bytes], n: int, timeout: float = 120.0) -> tuple[list[dict[str, Any]], float, float]:
    """Receive until the runner's ``n`` diagnostic events (and its final status) arrived."""
    events: list[dict[str, Any]] = []
    first = last = 0.0
    deadline = time.monotonic() + timeout
    while True:
        if not sock.poll(int(max(0.0, deadline - time.monotonic()) * 1000)):
            break
        # A runner sends [task_id, event, event, ...]; the supervisor [task_id, event].
        frames = sock.recv_multipart()
        now = time.time_ns()
        final = False
        for data in frames[1:]:
            event = orjson.loads(data)
            if "i" in event:
                event["_recv_ns"] = now
                events.append(event)
                if first == 0.0:
                    first = time.perf_counter()
                last = time.perf_counter()
            final = final or is_final(event)
        if final:
            break
    return events, first, last


def _summary(events: list[dict[str, Any]], n: int, first: float, last: float) -> dict[str, float]:
    seen = {e["i"] for e in events}
    rate = (len(events) - 1) / (last - first) if last > first else 0.0
    lat = [(e["_recv_ns"] - e["sent_ns"]) / 1e6 for e in events]
    return {
        "rate": rate,
        "lost": n - len(seen),
        "p50": _percentile(lat, 50) if lat else float("nan"),
        "p99": _percentile(lat, 99) if lat else float("nan"),
    }


def baseline(n: int, size: int, rate: float) -> dict[str, float]:
    """The runner into a bare SUB."""
    tmp = Path(tempfile.mkdtemp(prefix="rfb", dir="/tmp"))
    ctx: zmq.Context[Any] = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.setsockopt(zmq.RCVHWM, 100_000)
    endpoint = f"ipc://{tmp / 'ev.sock'}"
    sock.bind(endpoint)
    try:
        task_dir = tmp / "task"
        task_dir.mkdir()
        spec = JobSpec(
            task_id="bench",
            task_type="diagnostic",
            job="diagnostic",
            params={"events": n, "size": size, "rate": rate},
            device="cpu",
            host_device="cpu",
            task_dir=str(task_dir),
            events_endpoint=endpoint,
        )
        (task_dir / "spec.json").write_bytes(spec.dump())
        env = {**os.environ, "PYTHONPATH": str(REPO), "NO_ALBUMENTATIONS_UPDATE": "1"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "runner", str(task_dir / "spec.json")], env=env, start_new_session=True
        )
        events, first, last = _collect(sock, n)
        proc.wait(60)
        return _summary(events, n, first, last)
    finally:
        sock.close(linger=0)
        ctx.term()
        shutil.rmtree(tmp, ignore_errors=True)


def service(sup: SupervisorProcess, n: int, size: int, rate: float) -> dict[str, float]:
    """The runner into the supervisor, out to a SUB on events-out."""
    sub = sup.subscribe()
    daemon = psutil.Process(sup.pid)
    cpu_before = sum(daemon.cpu_times()[:2])
    task_id = sup.submit(params={"events": n, "size": size, "rate": rate})
    events, first, last = _collect(sub.sock, n)
    cpu = sum(daemon.cpu_times()[:2]) - cpu_before
    sub.close()
    task = sup.wait_final(task_id, timeout=120)
    assert task["status"] == "completed", task
    return {**_summary(events, n, first, last), "cpu_us": cpu / n * 1e6}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--latency-events", type=int, default=5_000)
    args = parser.parse_args()
    print(f"throughput: {args.events} events of {args.size} B, as fast as the runner sends", flush=True)
    base = baseline(args.events, args.size, 0)
    with SupervisorProcess(env={"RFUAV_START_MODE": "cold"}) as sup:
        svc = service(sup, args.events, args.size, 0)
        print(f"  baseline runner→SUB        {base['rate']:10,.0f} events/s  lost {base['lost']}")
        print(f"  runner→supervisor→SUB      {svc['rate']:10,.0f} events/s  lost {svc['lost']}")
        print(f"  ratio service/baseline     {svc['rate'] / base['rate']:.2f}   (goal ≥ 50,000/s, 0 lost)")
        # The machine is shared: the supervisor's own CPU per event says what one free core
        # would sustain, whatever else runs.
        print(
            f"  supervisor CPU per event   {svc['cpu_us']:.1f} µs  (one free core: ~{1e6 / svc['cpu_us']:,.0f} events/s)"
        )
        print(f"  load average               {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        n = args.latency_events
        print(f"latency: {n} events of {args.size} B at 1,000 events/s", flush=True)
        base_l = baseline(n, args.size, 1000)
        svc_l = service(sup, n, args.size, 1000)
    print(f"  baseline runner→SUB        p50 {base_l['p50']:.3f} ms  p99 {base_l['p99']:.3f} ms  lost {base_l['lost']}")
    print(f"  runner→supervisor→SUB      p50 {svc_l['p50']:.3f} ms  p99 {svc_l['p99']:.3f} ms  lost {svc_l['lost']}")
    ratio = svc_l["p99"] / base_l["p99"] if base_l["p99"] else float("nan")
    print(f"  ratio service/baseline p99 {ratio:.2f}   (goal p99 ≤ 5 ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
