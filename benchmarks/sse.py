"""SSE fan-out: 1,000 clients on one task — delivery latency and web memory, beside baselines.

``python -m benchmarks.sse`` starts the real service, holds a diagnostic task (diagnostic limit 0)
until every client is connected, then releases it: the runner emits ``EVENTS`` events at
``RATE``/s, each stamped with ``sent_ns``, and every client records ``now - sent_ns`` for each
event it receives (runner → supervisor → store → PUB → web hub → 1,000 HTTP streams). The
clients are raw asyncio sockets (a ``Protocol`` each, on uvloop where installed: the load
generator's own cost is in every figure) in ``LOADERS`` separate processes, so the load
generator does not share web's interpreter. Every client must receive
every event (checked by ``seq``), or the run fails.

Baselines, measured in the same run with the same load generators:

- the same task followed by one single client (what the service's hops cost alone);
- a bare Starlette SSE endpoint on uvicorn (one worker, same settings as web) fanning out the
  same kind of frames to the same number of clients: it frames each event once, stamps it with
  ``sent_ns`` and hands the bytes to every client's ``StreamingResponse`` (the textbook broadcast:
  each client's generator awaits a shared future, then its response writes). Its latency has no
  runner, supervisor or hub in it: what plain Starlette fan-out costs on this machine.

Web RSS per connected client is web's RSS with every client connected less before (the bare
server's likewise). The web worker count is printed (from ``web.server.config``).
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
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
class _Client(asyncio.Protocol):
    """One SSE client: sends the request, then times every event as its bytes arrive."""

    def __init__(self, request: bytes, connected: Callable[[], None]) -> None:
        self.request = request
        self.connected = connected
        self.latencies: list[int] = []
        self.seqs: list[int] = []
        self.buf = b""
        self.head_done = False
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # (uvloop's transports are no asyncio.Transport)
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        buf = self.buf + data
        if not self.head_done:
            if b"\r\n\r\n" not in buf:
                self.buf = buf
                return
            buf = buf.split(b"\r\n\r\n", 1)[1]
            self.head_done = True
            self.connected()
        # Chunked transfer: frames sit inside chunks; every data line is one whole JSON object.
        done = False
        while True:
            at = buf.find(b"\ndata: ")
            if at < 0:
                break
            end = buf.find(b"\n", at + 7)
            if end < 0:
                break
            event = orjson.loads(buf[at + 7 : end])
            buf = buf[end:]
            self.seqs.append(event["seq"])
            if "sent_ns" in event:
                self.latencies.append(now - event["sent_ns"])
            if is_final(event):
                done = True
        self.buf = buf
        if done and self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.finished.done():
            self.finished.set_result(None)


async def _load(port: int, path: str, clients: int) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    ready = asyncio.Event()
    counter = [0]

    def connected() -> None:
        counter[0] += 1
        if counter[0] == clients:
            ready.set()

    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n".encode()
    protocols = [_Client(request, connected) for _ in range(clients)]

    async def connect(protocol: _Client) -> None:
        await loop.create_connection(lambda: protocol, "127.0.0.1", port)

    for i in range(0, clients, 100):  # connect in waves: the listen backlog is finite
        await asyncio.gather(*(connect(p) for p in protocols[i : i + 100]))
    await ready.wait()
    print("READY", flush=True)
    await asyncio.gather(*(p.finished for p in protocols))
    return {"latencies_ns": [x for p in protocols for x in p.latencies], "seqs": [p.seqs for p in protocols]}


def loader_main(port: int, path: str, clients: int, out: str) -> None:
    try:  # the loop uvicorn uses too: the load generator's own cost stays small
        import uvloop

        result = uvloop.run(_load(port, path, clients))
    except ImportError:
        result = asyncio.run(_load(port, path, clients))
    complete = all(s == list(range(1, len(result["seqs"][0]) + 1)) and s == result["seqs"][0] for s in result["seqs"])
    usage = resource.getrusage(resource.RUSAGE_SELF)
    with open(out, "w") as f:
        json.dump({"latencies_ns": result["latencies_ns"], "complete": complete, "events": len(result["seqs"][0]),
                   "cpu": usage.ru_utime + usage.ru_stime}, f)  # fmt: skip


# -- the bare baseline (child process) -------------------------------------------------------
def bare_main(port: int, events: int, rate: float) -> None:
    """A bare Starlette SSE endpoint on uvicorn: ``GET /events`` streams every frame the
    producer broadcasts; ``GET /clients`` counts the open streams; ``POST /go`` starts the
    producer (``events`` events at ``rate``/s, then a final status event)."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    state: dict[str, Any] = {"clients": 0, "next": None}

    async def stream(request: Request) -> Response:
        if state["next"] is None:
            state["next"] = asyncio.get_running_loop().create_future()
        upcoming: asyncio.Future[Any] = state["next"]

        async def frames() -> Any:
            nonlocal upcoming
            state["clients"] += 1
            try:
                while True:
                    data, final, upcoming = await upcoming
                    yield data
                    if final:
                        return
            finally:
                state["clients"] -= 1

        return StreamingResponse(frames(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    async def clients(request: Request) -> Response:
        return JSONResponse({"clients": state["clients"]})

    async def produce() -> None:
        start = time.monotonic()
        for seq in range(1, events + 2):
            final = seq == events + 1
            await asyncio.sleep(max(0.0, start + (seq - 1) / rate - time.monotonic()))
            event: dict[str, Any] = {"seq": seq, "task_id": "bare", "timestamp": "2024-01-01T00:00:00.000Z",
                                     "kind": "status" if final else "log", "level": "INFO",
                                     "message": "completed" if final else f"event {seq}/{events}"}  # fmt: skip
            if final:
                event["status"] = "completed"
            else:
                event.update(i=seq, sent_ns=time.time_ns())
            data = b"id: %d\ndata: %s\n\n" % (seq, orjson.dumps(event))  # framed once, for everyone
            current, state["next"] = state["next"], asyncio.get_running_loop().create_future()
            current.set_result((data, final, state["next"]))

    async def go(request: Request) -> Response:
        state["producer"] = asyncio.get_running_loop().create_task(produce())
        return JSONResponse({})

    app = Starlette(routes=[Route("/events", stream), Route("/clients", clients), Route("/go", go, methods=["POST"])])
    uvicorn.run(app, host="127.0.0.1", port=port, workers=1, log_level="warning", access_log=False,
                server_header=False, timeout_graceful_shutdown=1)  # fmt: skip


# -- the benchmark ---------------------------------------------------------------------------
def _pct(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6 if ordered else float("nan")


def _measure(
    port: int, path: str, clients: int, server: psutil.Process, connected: Callable[[], int], release: Callable[[], Any]
) -> dict[str, Any]:
    """``clients`` clients on ``path``; ``release`` starts the events once ``connected()`` says
    every one is in. Latencies (ms), completeness, the server's RSS and CPU."""
    rss_before = server.memory_info().rss
    per = (
        [clients // LOADERS + (1 if i < clients % LOADERS else 0) for i in range(LOADERS)]
        if clients >= LOADERS
        else [clients]
    )
    tmp = tempfile.TemporaryDirectory(prefix="bench-sse-")
    outs = [os.path.join(tmp.name, f"load-{i}.json") for i in range(len(per))]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "benchmarks.sse", "--load", str(port), path, str(n), out],
            stdout=subprocess.PIPE,
            text=True,
        )
        for n, out in zip(per, outs, strict=True)
    ]
    for p in procs:
        assert p.stdout is not None
        line = p.stdout.readline()
        assert line.strip() == "READY", line
    deadline = time.monotonic() + 60
    while connected() < clients:
        if time.monotonic() > deadline:
            raise RuntimeError("not every client got its stream")
        time.sleep(0.05)
    rss_connected = server.memory_info().rss
    cpu_before = sum(server.cpu_times()[:2])
    release()
    peak = rss_connected
    while any(p.poll() is None for p in procs):
        peak = max(peak, server.memory_info().rss)
        time.sleep(0.1)
    if any(p.returncode != 0 for p in procs):
        raise RuntimeError(f"a load generator failed: exit statuses {[p.returncode for p in procs]}")
    results = []
    for p, out in zip(procs, outs, strict=True):
        assert p.stdout is not None
        p.stdout.close()
        with open(out) as f:
            results.append(json.load(f))
    tmp.cleanup()
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
        "per_client_kb": (rss_connected - rss_before) / 1024 / clients,
        "cpu": sum(server.cpu_times()[:2]) - cpu_before,
        "loader_cpu": sum(r["cpu"] for r in results),
    }


def _service_run(svc: Any, clients: int) -> dict[str, Any]:
    """One diagnostic task followed by ``clients`` clients of the service."""
    c = svc.client
    c.set_limits({"cpu": {"diagnostic": 0}})
    task = c.start_diagnostic(events=EVENTS, rate=RATE)

    def connected() -> int:
        return int(httpx.get(svc.url("/api/v1/health")).json()["data"]["active_log_streams"])

    return _measure(
        svc.port,
        f"/api/v2/tasks/{task['task_id']}/events",
        clients,
        psutil.Process(svc.web_pid),
        connected,
        lambda: c.set_limits({"cpu": {"diagnostic": 8}}),  # release the task: the events flow now
    )


def _bare_run(clients: int) -> dict[str, Any]:
    from tests.support.service import free_port

    port = free_port()
    bare = subprocess.Popen([sys.executable, "-m", "benchmarks.sse", "--bare", str(port), str(EVENTS), str(RATE)])
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{url}/clients")
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or bare.poll() is not None:
                    raise RuntimeError("the bare baseline did not start") from None
                time.sleep(0.05)
        return _measure(
            port,
            "/events",
            clients,
            psutil.Process(bare.pid),
            lambda: int(httpx.get(f"{url}/clients").json()["clients"]),
            lambda: httpx.post(f"{url}/go"),
        )
    finally:
        bare.terminate()
        bare.wait(10)


def _line(name: str, r: dict[str, Any]) -> str:
    per = f"{r['per_client_kb']:>6.1f} KB" if r["clients"] > 1 else f"{'-':>9}"
    return (f"{name:<34} {r['p50']:>8.1f} {r['p99']:>8.1f} {r['max']:>8.1f}   {per} "
            f"({r['rss_before']:.0f} -> {r['rss_connected']:.0f} -> {r['rss_peak']:.0f} MB)   "
            f"{r['cpu']:>5.2f} s {r['loader_cpu']:>5.2f} s   {r['events']} x {r['clients']}, "
            f"complete: {r['complete']}")  # fmt: skip


def main() -> int:
    from tests.support.service import Service
    from web.server import config

    with Service(env={"RFUAV_LOG_LEVEL": "WARNING"}) as svc:
        workers = config(svc.settings).workers
        one = _service_run(svc, 1)
        fan = _service_run(svc, CLIENTS)
    bare = _bare_run(CLIENTS)
    load = os.getloadavg()[0]
    print(f"SSE fan-out: {EVENTS} events at {RATE:g}/s to each client; web workers: {workers} "
          f"(bare baseline: 1 uvicorn worker); load average at the end {load:.1f}")  # fmt: skip
    print(f"{'':<34} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}   {'RSS per client':<40} "
          f"{'server CPU':>7} {'loaders':>7}")  # fmt: skip
    print(_line(f"service, {CLIENTS} clients", fan))
    print(_line("  baseline: service, 1 client", one))
    print(_line(f"  baseline: bare Starlette, {CLIENTS} clients", bare))
    print(f"service / bare at {CLIENTS} clients: p50 {fan['p50'] / max(bare['p50'], 1e-3):.2f}x, "
          f"p99 {fan['p99'] / max(bare['p99'], 1e-3):.2f}x, RSS per client "
          f"{fan['per_client_kb'] / max(bare['per_client_kb'], 1e-3):.2f}x, server CPU "
          f"{fan['cpu'] / max(bare['cpu'], 1e-3):.2f}x; service {CLIENTS} clients / 1 client: p99 "
          f"{fan['p99'] / max(one['p99'], 1e-3):.1f}x")  # fmt: skip
    print(f"goals at {CLIENTS} clients: p99 <= 50 ms ({'met' if fan['p99'] <= 50 else 'NOT met'}), "
          f"web memory per client <= 50 KB ({'met' if fan['per_client_kb'] <= 50 else 'NOT met'})")  # fmt: skip
    return 0 if one["complete"] and fan["complete"] and bare["complete"] else 1


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--load":
        loader_main(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5])
    elif len(sys.argv) == 5 and sys.argv[1] == "--bare":
        bare_main(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
    else:
        raise SystemExit(main())
