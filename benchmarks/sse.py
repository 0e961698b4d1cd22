"""SSE fan-out: 1,000 clients on one task — delivery latency and web memory.

``python -m benchmarks.sse`` starts the real service, holds a diagnostic task (diagnostic limit 0)
until every client is connected, then releases it: the runner emits ``EVENTS`` events at
``RATE``/s, each stamped with ``sent_ns``, and every client records ``now - sent_ns`` for each
event it receives (runner → supervisor → store → PUB → web hub → 1,000 HTTP streams). The
clients are raw asyncio sockets in ``LOADERS`` separate processes, so the load generator does not
share web's interpreter. The baseline, measured in the same run, is the same task followed by one
single client. Every client must receive every event (checked by ``seq``), or the run fails.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import subprocess
import sys
import threading
import time
from typing import Any

import httpx
import orjson
import psutil

from protocol.events import is_final

CLIENTS = int(os.environ.get("BENCH_SSE_CLIENTS", "1000"))
EVENTS = int(os.environ.get("BENCH_SSE_EVENTS", "100"))
RATE = float(os.environ.get("BENCH_SSE_RATE", "20"))
LOADERS = 2


# -- the load generator (child process) ------------------------------------------------------
async def _client(
    port: int, path: str, out: list[int], seqs: list[int], ready: asyncio.Event, counter: list[int], total: int
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n".encode())
    await writer.drain()
    buf = b""
    head_done = False
    while True:
        chunk = await reader.read(65536)
        if not chunk:
            break
        now = time.time_ns()
        buf += chunk
        if not head_done:
            if b"\r\n\r\n" not in buf:
                continue
            buf = buf.split(b"\r\n\r\n", 1)[1]
            head_done = True
            counter[0] += 1
            if counter[0] == total:
                ready.set()
        # Chunked transfer: frames sit inside chunks; every data line is one whole JSON object.
        done = False
        while b"\ndata: " in buf:
            start = buf.index(b"\ndata: ") + 7
            end = buf.find(b"\n", start)
            if end < 0:
                break
            event = orjson.loads(buf[start:end])
            buf = buf[end:]
            seqs.append(event["seq"])
            if "sent_ns" in event:
                out.append(now - event["sent_ns"])
            if is_final(event):
                done = True
        if done:
            break
    writer.close()


async def _load(port: int, path: str, clients: int) -> dict[str, Any]:
    latencies: list[list[int]] = [[] for _ in range(clients)]
    seqs: list[list[int]] = [[] for _ in range(clients)]
    ready = asyncio.Event()
    counter = [0]
    tasks = [
        asyncio.create_task(_client(port, path, latencies[i], seqs[i], ready, counter, clients)) for i in range(clients)
    ]
    await ready.wait()
    print("READY", flush=True)
    await asyncio.gather(*tasks)
    return {"latencies_ns": [x for lat in latencies for x in lat], "seqs": seqs}


def loader_main(port: int, path: str, clients: int) -> None:
    result = asyncio.run(_load(port, path, clients))
    complete = all(s == list(range(1, len(result["seqs"][0]) + 1)) and s == result["seqs"][0] for s in result["seqs"])
    usage = resource.getrusage(resource.RUSAGE_SELF)
    sys.stdout.write(json.dumps({"latencies_ns": result["latencies_ns"], "complete": complete,
                                 "events": len(result["seqs"][0]),
                                 "cpu": usage.ru_utime + usage.ru_stime}) + "\n")  # fmt: skip


# -- the benchmark ---------------------------------------------------------------------------
def _pct(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6 if ordered else float("nan")


def _run(svc: Any, clients: int) -> dict[str, Any]:
    """One task followed by ``clients`` clients; returns latencies (ms), completeness, web RSS."""
    c = svc.client
    c.set_limits({"cpu": {"diagnostic": 0}})
    task = c.start_diagnostic(events=EVENTS, rate=RATE)
    path = f"/api/v2/tasks/{task['task_id']}/events"
    web = psutil.Process(svc.web_pid)
    rss_before = web.memory_info().rss
    per = (
        [clients // LOADERS + (1 if i < clients % LOADERS else 0) for i in range(LOADERS)]
        if clients >= LOADERS
        else [clients]
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "benchmarks.sse", "--load", str(svc.port), path, str(n)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in per
        if n
    ]
    for p in procs:
        assert p.stdout is not None
        line = p.stdout.readline()
        assert line.strip() == "READY", line
    deadline = time.monotonic() + 60
    while httpx.get(svc.url("/api/v1/health")).json()["data"]["active_log_streams"] < clients:
        if time.monotonic() > deadline:
            raise RuntimeError("not every client got its stream")
        time.sleep(0.05)
    rss_connected = web.memory_info().rss
    cpu_before = sum(web.cpu_times()[:2])
    started = time.monotonic()
    c.set_limits({"cpu": {"diagnostic": 8}})  # release the task: the events flow now
    peak = rss_connected
    outs: dict[int, str] = {}
    readers = [threading.Thread(target=lambda i=i, p=p: outs.__setitem__(i, p.stdout.read()))
               for i, p in enumerate(procs)]  # fmt: skip
    for t in readers:
        t.start()
    while any(t.is_alive() for t in readers):
        peak = max(peak, web.memory_info().rss)
        readers[0].join(0.1)
    for p in procs:
        p.wait()
    results = [json.loads(outs[i]) for i in range(len(procs))]
    elapsed = time.monotonic() - started
    web_cpu = sum(web.cpu_times()[:2]) - cpu_before
    latencies = [x for r in results for x in r["latencies_ns"]]
    return {
        "clients": clients,
        "complete": all(r["complete"] for r in results) and len({r["events"] for r in results}) == 1,
        "events": results[0]["events"],
        "deliveries": len(latencies),
        "p50": _pct(latencies, 0.50),
        "p99": _pct(latencies, 0.99),
        "max": _pct(latencies, 1.0),
        "rss_before": rss_before / 2**20,
        "rss_connected": rss_connected / 2**20,
        "rss_peak": peak / 2**20,
        "elapsed": elapsed,
        "web_cpu": web_cpu,
        "loader_cpu": sum(r["cpu"] for r in results),
    }


def main() -> int:
    from tests.support.service import Service

    with Service(env={"RFUAV_LOG_LEVEL": "WARNING"}) as svc:
        base = _run(svc, 1)
        fan = _run(svc, CLIENTS)
    for r in (base, fan):
        print(f"{r['clients']:>5} client(s): {r['events']} events each, {r['deliveries']} timed deliveries, "
              f"all complete: {r['complete']}; latency p50 {r['p50']:.1f} ms, p99 {r['p99']:.1f} ms, "
              f"max {r['max']:.1f} ms; web RSS {r['rss_before']:.0f} MB idle -> {r['rss_connected']:.0f} MB "
              f"connected -> {r['rss_peak']:.0f} MB peak; web CPU {r['web_cpu']:.1f} s, "
              f"load generators' CPU {r['loader_cpu']:.1f} s, in {r['elapsed']:.1f} s")  # fmt: skip
    print(
        f"events emitted at {RATE:g}/s; ratio p99 {CLIENTS} clients / 1 client: {fan['p99'] / max(base['p99'], 1e-3):.1f}"
    )
    print(f"web memory per connected client: {(fan['rss_connected'] - fan['rss_before']) * 1024 / CLIENTS:.1f} KB")
    return 0 if base["complete"] and fan["complete"] else 1


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--load":
        loader_main(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
    else:
        raise SystemExit(main())
