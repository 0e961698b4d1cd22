"""Online serving: ours against the seed article's FastAPI app and LitServe, same model, same
thread budget, same load, one run.

``python -m benchmarks.serving`` (about 4 minutes; ``--quick``: a smoke run of about 2; ``--help``: options).

The model: resnet18 at 64 px trained here (three epochs of our runner's ``training`` job on 192
synthetic spectrograms of four classes, ``deploy/demo/spectra.py``; under a minute), cached under
``var/bench/`` so that a rerun skips it; should training fail, a random-init model stands in and
the output says so. The input: validation-style tensors ``(3, 64, 64)`` of spectrograms as nested
JSON lists (``{"input": ...}``, 4 decimals), 16 different bodies in rotation.

Scenarios, one server at a time (this machine's cores are shared with the load generator):

- (a) the article's app as written (``serving_apps/article.py``): FastAPI on one uvicorn worker,
  torch threads = the budget, one forward pass per request inside the async handler;
- (b) the same app's ``/predict_batch`` with client-side batches of ``--batch`` inputs;
- (c) LitServe (``serving_apps/lit.py``): the same prepared model, threads, ``max_batch_size``
  and ``batch_timeout`` as ours;
- (d) ours: the real service (supervisor + web), one deployment (``POST /api/v2/serving/deploy``,
  1 replica, the budget's threads, ``max_batch_size`` 16, ``max_batch_delay_ms`` 5,
  ``cache_size`` 0 since no other server caches and the bodies repeat), loaded through the
  article's ``/predict`` and through ``/api/v2/serving/bench/predict``. Not deployable yet (404,
  failed): ``ours: SKIP (...)``, and the rest goes on.

Load for each: ``wrk`` (closed loop, ``--connections``; wrk's own CPU from the kernel's rusage
of the child), concurrency-1 latency (one connection, back to back), then fixed offered rates
(open loop, ``--rates`` × the article's maximum; latency from each request's *scheduled* send
time, so a server that falls behind is not flattered; the client's timers add up to about 1 ms).
A server's maximum throughput is the better of its two closed-loop loads (the article's app, one
request at a time on its event loop, can do better on one connection than on many). The
open-loop and concurrency-1 client is this process (asyncio on raw keep-alive sockets); its CPU
is reported too. Server CPU per answered input sums every process of the server; "other load"
is what the rest of the machine used meanwhile, in cores (the machine may be shared: rows above
0.25 are listed in a warning). After each wrk run, one request waits out the backlog the closed
connections left behind before the next load starts.

Baseline in the same run: a bare forward pass of the same model on one input, prepared as our
replicas prepare it (``runner.inference.load_model``: conv+bn fused, channels-last), same
threads, timed in this process before any server starts and again just before each
concurrency-1 run (the server idle), which is what that run is compared with.

Goals (reported, never judged: the exit status is 0 unless the benchmark itself breaks):
ours ≥ 3× the article's maximum throughput with a lower p99 at the article's maximum rate;
ours ≥ 1.0× LitServe's maximum throughput; ours' concurrency-1 p50 within 3 ms of the bare
forward pass.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import httpx
import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "var" / "bench" / "serving-resnet18-64px-v2"
MODEL, SIZE, DEPLOYMENT = "resnet18", 64, "bench"
EPOCHS, PER_CLASS = 3, 48  # training (once, cached): about a minute on two cores
TOLERANCE = 1e-3  # probabilities: the fused model against the plain one


# -- results ---------------------------------------------------------------------------------


@dataclass
class Result:
    load: str
    ok: int = 0
    errors: int = 0
    seconds: float = 0.0
    items_per_request: int = 1
    latencies_ms: list[float] = field(default_factory=list)
    percentiles: dict[int, float] = field(default_factory=dict)  # when the client computed them (wrk)
    client_cpu_s: float = 0.0
    server_cpu_s: float | None = None
    #: CPU seconds the rest of the machine used meanwhile (not the server, not the client).
    other_cpu_s: float | None = None
    wall_s: float = 0.0
    note: str = ""

    @property
    def rps(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else 0.0

    @property
    def items_per_s(self) -> float:
        return self.rps * self.items_per_request

    def pct(self, q: int) -> float | None:
        if q in self.percentiles:
            return self.percentiles[q]
        if not self.latencies_ms:
            return None
        return float(np.percentile(self.latencies_ms, q))


@dataclass
class Scenario:
    key: str
    title: str
    results: dict[str, Result] = field(default_factory=dict)  # "max", "rate:<fraction>", "c1"
    check: str = ""
    skipped: str = ""
    route: str = ""
    #: The bare forward pass (p50, p99 ms), timed just before this scenario's concurrency-1 run.
    bare: tuple[float, float] | None = None

    def best(self) -> Result | None:
        """Its maximum throughput: the closed-loop load that answered the most inputs per second
        (wrk's many connections, or one connection when that does better, as for the article)."""
        closed = [r for k, r in self.results.items() if k in ("max", "c1") and r.ok]
        return max(closed, key=lambda r: r.items_per_s) if closed else None


# -- the model, the inputs and the bare baseline ----------------------------------------------


def prepare_model(work: Path, threads: int, retrain: bool) -> tuple[Path, Path, str]:
    """(config.yaml, best.pth, a note): trained here once and cached, or random-init on failure."""
    cfg, weights, meta = CACHE / "config.yaml", CACHE / "best.pth", CACHE / "meta.json"
    if not retrain and cfg.is_file() and weights.is_file() and meta.is_file():
        return cfg, weights, json.loads(meta.read_text())["note"] + f" (cached in {CACHE.relative_to(ROOT)})"
    from deploy.demo.spectra import KINDS, spectrograms
    from tests.runner.harness import RunnerProcess

    data = work / "train-data"
    spectrograms(data / "train", per_class=PER_CLASS, size=SIZE, seed=0, classes=KINDS)
    spectrograms(data / "val", per_class=12, size=SIZE, seed=1, classes=KINDS)
    params = {"model": MODEL, "num_classes": len(KINDS), "train_path": str(data / "train"),
              "val_path": str(data / "val"), "save_path": str(work / "trained"), "batch_size": 16, "num_epochs": EPOCHS,
              "learning_rate": 1e-3, "image_size": SIZE, "pretrained": False, "augment": False, "seed": 0,
              "num_workers": 0}  # fmt: skip
    started = time.monotonic()
    images = PER_CLASS * len(KINDS)
    print(f"training {MODEL} @ {SIZE}px, {EPOCHS} epochs, {images} images (once; cached)...", flush=True)
    try:
        with RunnerProcess("training", params, work / "train-task", torch_threads=threads) as rp:
            final = rp.finish(timeout=900)
            if final["status"] != "completed":
                raise RuntimeError(f"{final['status']}: {final.get('message', '')}"[:300])
        import torch

        best = torch.load(work / "trained" / "best.pth", map_location="cpu", weights_only=True)
        note = (f"{MODEL} @ {SIZE}px trained here: {EPOCHS} epochs of our training job on {images} synthetic "
                f"spectrograms, {len(KINDS)} classes, val acc {float(best.get('best_acc', 0.0)):.0f}%")  # fmt: skip
        CACHE.mkdir(parents=True, exist_ok=True)
        for name in ("config.yaml", "best.pth"):
            shutil.copyfile(work / "trained" / name, CACHE / name)
        meta.write_text(json.dumps({"note": note, "seconds": round(time.monotonic() - started, 1)}))
        return cfg, weights, note + f" (took {time.monotonic() - started:.0f} s; cached)"
    except Exception as exc:  # noqa: BLE001 - a fallback, said loudly
        return random_model(work, exc)


def random_model(work: Path, why: BaseException) -> tuple[Path, Path, str]:
    import torch
    import yaml

    from deploy.demo.spectra import KINDS
    from runner import datasets, models

    out = work / "random"
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = models.build(MODEL, len(KINDS)).eval()
    torch.save({"model": model.state_dict(), "model_name": MODEL, "num_classes": len(KINDS)}, out / "best.pth")
    (out / "config.yaml").write_text(yaml.safe_dump({
        "model": MODEL, "num_classes": len(KINDS), "class_names": list(KINDS), "image_size": SIZE,
        "mean": list(datasets.MEAN), "std": list(datasets.STD)}))  # fmt: skip
    note = f"RANDOM-INIT {MODEL} @ {SIZE}px: training failed ({type(why).__name__}: {str(why)[:200]}), not cached"
    return out / "config.yaml", out / "best.pth", note


def make_inputs(count: int, seed: int = 7) -> list[Any]:
    """``count`` model-ready tensors ``(3, SIZE, SIZE)``: spectrograms through the validation transform."""
    import cv2

    from deploy.demo.spectra import KINDS, spectrogram
    from runner import datasets

    rng = np.random.default_rng(seed)
    transform = datasets.transforms(SIZE)
    out = []
    for i in range(count):
        bgr = spectrogram(KINDS[i % len(KINDS)], SIZE, rng)
        tensor = transform(image=cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))["image"]
        out.append(tensor.numpy().astype(np.float64).round(4))  # short JSON; the servers read float32
    return out


class Bare:
    """The baseline: one forward pass of one input, the model prepared as our replicas prepare it,
    the same threads, in this process; also the plain (unfused) model's probabilities for each
    input, to check every server's answers."""

    def __init__(self, cfg: Path, weights: Path, threads: int, inputs: list[Any]) -> None:
        import torch

        from runner import devices, models
        from runner.inference import ModelConfig, load_model

        torch.set_num_threads(threads)
        config = ModelConfig.load(cfg)
        self.model, self.prepared = load_model(config, weights, devices.resolve("cpu"))
        plain = models.build(config.model, config.num_classes)
        plain.load_state_dict(models.state_of(models.load_weights_file(weights)))
        plain.eval()
        arrays = [np.asarray(x, dtype=np.float32) for x in inputs]
        self.xs = [torch.from_numpy(x).unsqueeze(0).contiguous(memory_format=torch.channels_last) for x in arrays]
        with torch.inference_mode():
            self.reference = [torch.softmax(plain(torch.from_numpy(x).unsqueeze(0)), dim=1)[0].tolist() for x in arrays]

    def time(self, iterations: int) -> tuple[float, float]:
        """(p50, p99) ms of ``iterations`` forward passes after 20 unmeasured ones."""
        import torch

        samples = []
        with torch.inference_mode():
            for i in range(iterations + 20):
                started = time.perf_counter()
                self.model(self.xs[i % len(self.xs)])
                if i >= 20:
                    samples.append((time.perf_counter() - started) * 1000)
        return float(np.percentile(samples, 50)), float(np.percentile(samples, 99))

    def time_request(self, bodies: list[bytes], iterations: int) -> tuple[float, float]:
        """(p50, p99) ms of what answering one request needs at the least, in process: orjson-decode
        the body, to a float32 tensor, forward, softmax, orjson-encode the answer (no HTTP)."""
        import orjson
        import torch

        samples = []
        with torch.inference_mode():
            for i in range(iterations + 20):
                started = time.perf_counter()
                x = torch.from_numpy(np.asarray(orjson.loads(bodies[i % len(bodies)])["input"], dtype=np.float32))
                probs = torch.softmax(self.model(x.unsqueeze(0).contiguous(memory_format=torch.channels_last)), dim=1)
                orjson.dumps({"prediction": probs.tolist()})
                if i >= 20:
                    samples.append((time.perf_counter() - started) * 1000)
        return float(np.percentile(samples, 50)), float(np.percentile(samples, 99))


def probabilities(answer: Any) -> list[float]:
    """The first input's probabilities from any server's answer (article, LitServe, ours)."""
    if isinstance(answer, dict) and isinstance(answer.get("data"), dict):
        answer = answer["data"]  # our envelope
    if "results" in answer:
        first = answer["results"][0]
        answer = first if isinstance(first, dict) else {"prediction": first}
    p = answer["prediction"]
    return [float(v) for v in (p[0] if p and isinstance(p[0], list) else p)]


# -- load: wrk (maximum throughput) ----------------------------------------------------------

_WRK_LUA = """
local requests = {}
local n = 0
function init(args)
  for i, path in ipairs(args) do
    local f = assert(io.open(path, "rb"))
    local body = f:read("*a")
    f:close()
    requests[i] = wrk.format("POST", nil, {["Content-Type"] = "application/json"}, body)
  end
end
function request()
  n = n + 1
  return requests[(n - 1) % #requests + 1]
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH requests %d\\nBENCH duration_us %d\\nBENCH connect %d\\nBENCH read %d\\n",
    summary.requests, summary.duration, e.connect, e.read))
  io.write(string.format("BENCH write %d\\nBENCH status %d\\nBENCH timeout %d\\n", e.write, e.status, e.timeout))
  for _, p in ipairs({50, 95, 99}) do
    io.write(string.format("BENCH p%d %d\\n", p, latency:percentile(p)))
  end
end
"""


def wrk(url: str, bodies: list[Path], connections: int, seconds: int, tmp: Path, load: str, items: int = 1) -> Result:
    """wrk, one thread, closed loop; its CPU is the kernel's rusage of the child (os.wait4)."""
    script = tmp / "bodies.lua"
    if not script.exists():
        script.write_text(_WRK_LUA)
    out_path = tmp / "wrk.out"
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", str(script), url, "--",
           *map(str, bodies)]  # fmt: skip
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    text = out_path.read_text(errors="replace")
    figures = {k: int(v) for k, v in re.findall(r"^BENCH (\w+) (\d+)$", text, re.MULTILINE)}
    if proc.returncode != 0 or "requests" not in figures:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {text[-500:]}")
    errors = sum(figures[k] for k in ("connect", "read", "write", "status", "timeout"))
    return Result(load=load, ok=figures["requests"] - figures["status"], errors=errors,
                  seconds=figures["duration_us"] / 1e6, items_per_request=items,
                  percentiles={q: figures[f"p{q}"] / 1000 for q in (50, 95, 99)},
                  client_cpu_s=usage.ru_utime + usage.ru_stime)  # fmt: skip


# -- load: this process (open loop at fixed rates, concurrency 1) ----------------------------


class _Conn:
    """One keep-alive HTTP/1.1 connection on asyncio streams (Content-Length or chunked answers)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self.reusable = reader, writer, True

    @classmethod
    async def open(cls, host: str, port: int) -> _Conn:
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
        return cls(reader, writer)

    async def roundtrip(self, request: bytes) -> tuple[int, bytes]:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        lower = head.lower()
        length = re.search(rb"\r\ncontent-length:\s*(\d+)", lower)
        if length is not None:
            body = await self.reader.readexactly(int(length.group(1)))
        elif b"\r\ntransfer-encoding: chunked" in lower:
            chunks = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                chunks.append(await self.reader.readexactly(size + 2))
                if size == 0:
                    break
            body = b"".join(c[:-2] for c in chunks)
        else:
            body, self.reusable = await self.reader.read(), False
        if b"\r\nconnection: close" in lower:
            self.reusable = False
        return status, body

    def close(self) -> None:
        self.writer.close()


def _requests(host: str, port: int, path: str, bodies: list[bytes]) -> list[bytes]:
    return [(f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
             f"Content-Length: {len(b)}\r\n\r\n").encode() + b for b in bodies]  # fmt: skip


#: Wall clock of the client: ``perf_counter`` (uvloop's ``loop.time()`` ticks in whole milliseconds).
clock = time.perf_counter


async def _open_loop(
    host: str, port: int, requests: list[bytes], rate: float, seconds: float, timeout: float
) -> tuple[list[float], int, float]:
    """Send at ``rate``/s for ``seconds`` whatever the answers do (new connections as needed, at
    most 512); latency from each request's scheduled time. (latencies ms, errors, elapsed s)."""
    idle: list[_Conn] = []
    slots = asyncio.Semaphore(512)
    latencies: list[float] = []
    errors = 0
    last_done = 0.0

    async def one(i: int, at: float) -> None:
        nonlocal errors, last_done
        async with slots:
            conn = idle.pop() if idle else None
            try:
                if conn is None:
                    conn = await _Conn.open(host, port)
                status, _ = await asyncio.wait_for(conn.roundtrip(requests[i % len(requests)]), timeout)
            except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
                errors += 1
                if conn is not None:
                    conn.close()
                return
            now = clock()
            last_done = max(last_done, now)
            if status == 200:
                latencies.append((now - at) * 1000)
            else:
                errors += 1
            if conn.reusable:
                idle.append(conn)
            else:
                conn.close()

    start = clock() + 0.02
    tasks = []
    for i in range(max(1, round(rate * seconds))):
        at = start + i / rate
        delay = at - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, at)))
    await asyncio.gather(*tasks)
    for conn in idle:
        conn.close()
    return latencies, errors, (last_done or clock()) - start


async def _sequential(host: str, port: int, requests: list[bytes], seconds: float, timeout: float) -> tuple[
    list[float], int, float
]:  # fmt: skip
    conn = await _Conn.open(host, port)
    latencies: list[float] = []
    errors, i = 0, 0
    start = clock()
    while clock() - start < seconds:
        sent = clock()
        i += 1
        try:
            status, _ = await asyncio.wait_for(conn.roundtrip(requests[i % len(requests)]), timeout)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            status = 0
            conn.reusable = False
        if status == 200:
            latencies.append((clock() - sent) * 1000)
        else:
            errors += 1
        if not conn.reusable:
            conn.close()
            conn = await _Conn.open(host, port)
    conn.close()
    return latencies, errors, clock() - start


def _run_client(coro_factory: Callable[[], Any]) -> tuple[tuple[list[float], int, float], float]:
    """Run the client coroutine (uvloop when installed); returns (its result, this process's CPU s)."""
    me = psutil.Process()
    before = sum(me.cpu_times()[:2])
    try:
        import uvloop

        result = uvloop.run(coro_factory())
    except ImportError:
        result = asyncio.run(coro_factory())
    return result, sum(me.cpu_times()[:2]) - before


def open_loop(url: str, path: str, bodies: list[bytes], rate: float, seconds: float, load: str) -> Result:
    host, port = _host_port(url)
    reqs = _requests(host, port, path, bodies)
    (lat, errors, elapsed), cpu = _run_client(lambda: _open_loop(host, port, reqs, rate, seconds, timeout=15.0))
    return Result(load=load, ok=len(lat), errors=errors, seconds=elapsed, latencies_ms=lat, client_cpu_s=cpu)


def concurrency_1(url: str, path: str, bodies: list[bytes], seconds: float, items: int = 1) -> Result:
    host, port = _host_port(url)
    reqs = _requests(host, port, path, bodies)
    (lat, errors, elapsed), cpu = _run_client(lambda: _sequential(host, port, reqs, seconds, timeout=15.0))
    return Result(load="concurrency 1", ok=len(lat), errors=errors, seconds=elapsed, items_per_request=items,
                  latencies_ms=lat, client_cpu_s=cpu)  # fmt: skip


def _host_port(url: str) -> tuple[str, int]:
    hostport = url.split("://", 1)[1].split("/", 1)[0]
    host, port = hostport.rsplit(":", 1)
    return host, int(port)


# -- servers ---------------------------------------------------------------------------------


def tree_cpu(pids: list[int]) -> dict[int, float]:
    """CPU seconds (user + system) of every live process under ``pids``."""
    out: dict[int, float] = {}
    for pid in pids:
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            continue
        for p in procs:
            try:
                out[p.pid] = sum(p.cpu_times()[:2])
            except psutil.Error:
                pass
    return out


def _busy() -> float:
    """CPU seconds the whole machine has been busy (all cores; idle and iowait excluded)."""
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


def measured(pids: list[int], run: Callable[[], Result]) -> Result:
    """``run()`` with the server's CPU over it, and what the rest of the machine used meanwhile
    (this machine is shared: a busy neighbour shows here, not as a slow server)."""
    before, busy, wall = tree_cpu(pids), _busy(), time.monotonic()
    result = run()
    after = tree_cpu(pids)
    result.server_cpu_s = sum(v - before.get(pid, 0.0) for pid, v in after.items())
    result.wall_s = time.monotonic() - wall
    result.other_cpu_s = max(0.0, _busy() - busy - result.server_cpu_s - result.client_cpu_s)
    return result


#: Other processes using more than this share of a core during a run make its figures suspect.
DISTURBED = 0.25


def free_port() -> int:
    from tests.support.service import free_port as _free

    return _free()


@contextmanager
def process_server(cmd: list[str], env: dict[str, str], log: Path, ready: Callable[[], bool]) -> Iterator[int]:
    """A server in a process group of its own (stopped as a group: SIGTERM, then SIGKILL); yields its pid
    once ``ready()`` is true."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while not ready():
            if proc.poll() is not None:
                raise RuntimeError(f"exited with {proc.returncode}: {log.read_text(errors='replace')[-800:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"not ready within 180 s: {log.read_text(errors='replace')[-800:]}")
            time.sleep(0.2)
        yield proc.pid
    finally:
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 15)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue


def answers(url: str, body: bytes) -> Callable[[], bool]:
    def ready() -> bool:
        try:
            return (
                httpx.post(url, content=body, headers={"Content-Type": "application/json"}, timeout=10).status_code
                == 200
            )
        except httpx.HTTPError:
            return False

    return ready


def settle(url: str, body: bytes) -> None:
    """Wait out the backlog a closed-loop run leaves behind (requests of closed connections that the
    server still works through, the article's above all): one request queues behind them."""
    try:
        httpx.post(url, content=body, headers={"Content-Type": "application/json"}, timeout=120)
    except httpx.HTTPError:
        pass
    time.sleep(0.2)


def check_answer(url: str, body: bytes, reference: list[float]) -> str:
    r = httpx.post(url, content=body, headers={"Content-Type": "application/json"}, timeout=30)
    r.raise_for_status()
    got = probabilities(r.json())
    if len(got) != len(reference):
        return f"answer MISMATCH: {len(got)} probabilities, the model has {len(reference)} classes"
    delta = max(abs(a - b) for a, b in zip(got, reference))
    verdict = "matches" if delta <= TOLERANCE else "MISMATCH with"
    return f"answer {verdict} the bare model (max |dp| {delta:.1e})"


def deploy_ours(base: str, home: Path, cfg: Path, weights: Path, args: argparse.Namespace) -> None:
    """Deploy and wait for ``ready``; raises ``RuntimeError`` with the reason otherwise."""
    target = home / "models" / "bench"  # inside the service's default data root (its RFUAV_HOME)
    target.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cfg, target / "config.yaml")
    shutil.copyfile(weights, target / "best.pth")
    request = {"name": DEPLOYMENT, "cfg_path": str(target / "config.yaml"), "weight_path": str(target / "best.pth"),
               "device": "cpu", "replicas": 1, "threads": args.threads, "max_batch_size": args.max_batch_size,
               "max_batch_delay_ms": args.max_batch_delay_ms, "cache_size": 0}  # fmt: skip
    with httpx.Client(base_url=base, timeout=30) as http:
        r = http.post("/api/v2/serving/deploy", json=request)
        if r.status_code >= 300:
            raise RuntimeError(f"POST /api/v2/serving/deploy answered {r.status_code}: {_msg(r)}")
        deadline = time.monotonic() + 240
        while True:
            r = http.get(f"/api/v2/serving/{DEPLOYMENT}")
            status = (r.json().get("data") or {}).get("status") if r.status_code == 200 else None
            if status == "ready":
                return
            if status in ("failed", "stopped") or r.status_code >= 400:
                raise RuntimeError(f"deployment {status or r.status_code}: {_msg(r)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"deployment not ready within 240 s (status {status})")
            time.sleep(0.25)


def _msg(r: httpx.Response) -> str:
    try:
        body = r.json()
        return str(body.get("msg") or body.get("message") or body.get("detail") or body)[:300]
    except ValueError:
        return r.text[:300]


# -- the run -----------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path, bare: Bare) -> None:
        self.args, self.tmp, self.bare = args, tmp, bare
        self.scenarios: dict[str, Scenario] = {}
        self.rate_base: float | None = args.rate_base
        self.notes: list[str] = []

    def rates(self) -> list[float]:
        return [] if not self.rate_base else [f * self.rate_base for f in self.args.rates]

    def load_all(self, sc: Scenario, url: str, path: str, pids: list[int], wrk_bodies: list[Path],
                 bodies: list[bytes], items: int = 1, connections: int | None = None,
                 fixed_rates: bool = True) -> None:  # fmt: skip
        """Warm-up, maximum throughput (wrk), concurrency 1 (after the bare forward pass is timed
        again, the server idle), then the fixed rates."""
        a = self.args
        conns = connections or a.connections
        wrk(url + path, wrk_bodies, conns, 1, self.tmp, "warm-up")
        settle(url + path, bodies[0])
        sc.results["max"] = measured(
            pids, lambda: wrk(url + path, wrk_bodies, conns, a.seconds, self.tmp, f"max (wrk -c{conns})", items)
        )
        settle(url + path, bodies[0])
        sc.bare = self.bare.time(a.bare_iterations)
        sc.results["c1"] = measured(pids, lambda: concurrency_1(url, path, bodies, a.c1_seconds, items))
        best = sc.best()
        if sc.key == "a" and self.rate_base is None and best is not None:
            self.rate_base = best.rps
        if fixed_rates:
            for fraction, rate in zip(a.rates, self.rates()):
                label = f"{rate:.0f}/s open ({fraction:.0%})"
                sc.results[f"rate:{fraction}"] = measured(
                    pids, lambda r=rate, lb=label: open_loop(url, path, bodies, r, a.rate_seconds, lb)
                )

    def run_article(self, num_classes: int, weights: Path, bodies: list[bytes], batch_bodies: list[bytes],
                    files: list[Path], batch_files: list[Path]) -> None:  # fmt: skip
        a = self.args
        sa = Scenario("a", "(a) article /predict: FastAPI, 1 uvicorn worker, one forward per request in the handler")
        sb = Scenario("b", f"(b) article /predict_batch: client-side batches of {a.batch}, its 4-thread pool")
        for sc in (sa, sb):
            if sc.key in a.scenarios:
                self.scenarios[sc.key] = sc
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = dict(os.environ, BENCH_WEIGHTS=str(weights), BENCH_NUM_CLASSES=str(num_classes),
                   BENCH_THREADS=str(a.threads), PYTHONWARNINGS="ignore::DeprecationWarning")  # fmt: skip
        cmd = [sys.executable, "-m", "uvicorn", "benchmarks.serving_apps.article:app", "--host", "127.0.0.1",
               "--port", str(port), "--workers", "1", "--log-level", "warning", "--no-access-log"]  # fmt: skip
        reference = self.bare.reference[0]
        try:
            with process_server(cmd, env, self.tmp / "article.log", answers(url + "/predict", bodies[0])) as pid:
                if "a" in a.scenarios:
                    try:
                        sa.check = check_answer(url + "/predict", bodies[0], reference)
                        self.load_all(sa, url, "/predict", [pid], files, bodies)
                    except Exception as exc:  # noqa: BLE001 - reported, the run goes on
                        sa.skipped = f"FAILED ({type(exc).__name__}: {exc})"
                if "b" in a.scenarios:
                    try:
                        sb.check = check_answer(url + "/predict_batch", batch_bodies[0], reference)
                        self.load_all(sb, url, "/predict_batch", [pid], batch_files, batch_bodies, items=a.batch,
                                      connections=a.batch_connections, fixed_rates=False)  # fmt: skip
                    except Exception as exc:  # noqa: BLE001
                        sb.skipped = f"FAILED ({type(exc).__name__}: {exc})"
        except Exception as exc:  # noqa: BLE001
            for s in (sa, sb):
                s.skipped = s.skipped or f"FAILED to start ({exc})"

    def run_lit(self, cfg: Path, weights: Path, bodies: list[bytes], files: list[Path]) -> None:
        a = self.args
        title = (f"(c) LitServe: 1 API server + 1 worker, max_batch_size {a.max_batch_size}, "
                 f"batch_timeout {a.max_batch_delay_ms:g} ms, fast_queue")  # fmt: skip
        sc = self.scenarios.setdefault("c", Scenario("c", title))
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
        cmd = [sys.executable, "-m", "benchmarks.serving_apps.lit", "--port", str(port), "--cfg", str(cfg),
               "--weights", str(weights), "--threads", str(a.threads), "--max-batch-size", str(a.max_batch_size),
               "--batch-timeout-ms", str(a.max_batch_delay_ms)]  # fmt: skip
        try:
            with process_server(cmd, env, self.tmp / "lit.log", answers(url + "/predict", bodies[0])) as pid:
                sc.check = check_answer(url + "/predict", bodies[0], self.bare.reference[0])
                self.load_all(sc, url, "/predict", [pid], files, bodies)
        except Exception as exc:  # noqa: BLE001
            sc.skipped = f"FAILED ({type(exc).__name__}: {exc})"

    def run_ours(self, cfg: Path, weights: Path, bodies: list[bytes], files: list[Path]) -> None:
        a = self.args
        settings = (f"1 replica, {a.threads} threads, max_batch_size {a.max_batch_size}, "
                    f"max_batch_delay_ms {a.max_batch_delay_ms:g}, cache off")  # fmt: skip
        routes = {"d1": "/predict", "d2": f"/api/v2/serving/{DEPLOYMENT}/predict"}
        for key, route in routes.items():
            self.scenarios.setdefault(key, Scenario(key, f"(d) ours {route}: {settings}", route=route))

        def skip(why: str) -> None:
            for key in routes:
                self.scenarios[key].skipped = f"SKIP (serving not available: {why[:400]})"

        from tests.support.service import Service

        try:
            svc = Service(env={"RFUAV_LOG_LEVEL": "WARNING", "RFUAV_DEFAULT_DEPLOYMENT": DEPLOYMENT}).start()
        except Exception as exc:  # noqa: BLE001 - said, and the rest stands
            skip(f"the service did not start: {type(exc).__name__}: {str(exc)[:300]}")
            return
        started: list[psutil.Process] = []
        try:
            try:
                deploy_ours(svc.base_url, svc.home, cfg, weights, a)
            except Exception as exc:  # noqa: BLE001 - not built yet (404), or broken
                skip(str(exc) if isinstance(exc, RuntimeError) else f"{type(exc).__name__}: {exc}")
                return
            pids = [svc.web_pid, svc.supervisor.pid]
            started = [p for pid in pids for p in _tree(pid)]
            for key, route in routes.items():
                sc = self.scenarios[key]
                try:
                    sc.check = check_answer(svc.url(route), bodies[0], self.bare.reference[0])
                    self.load_all(sc, svc.base_url, route, pids, files, bodies)
                except Exception as exc:  # noqa: BLE001
                    sc.skipped = f"FAILED ({type(exc).__name__}: {exc})"
            started = [p for pid in pids for p in _tree(pid)]
            try:
                r = httpx.delete(svc.url(f"/api/v2/serving/{DEPLOYMENT}"), timeout=60)
                if r.status_code >= 300:
                    self.notes.append(f"ours: DELETE /api/v2/serving/{DEPLOYMENT} answered {r.status_code}: {_msg(r)}")
            except httpx.HTTPError as exc:
                self.notes.append(f"ours: DELETE /api/v2/serving/{DEPLOYMENT} failed: {exc}")
        finally:
            stop_started = time.monotonic()
            try:
                try:  # the test helper waits 60 s for the supervisor: 20 s is plenty, and reported
                    svc.stop_web()
                    svc.supervisor.stop(timeout=20)
                finally:
                    svc.close()
            except Exception as exc:  # noqa: BLE001 - the figures stand; the stop is reported
                self.notes.append(f"ours: stopping the service: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                                  f" (after {time.monotonic() - stop_started:.0f} s)")  # fmt: skip
            for proc in started:  # a replica the supervisor left behind: ours to end (psutil checks it is the same)
                try:
                    if proc.is_running():
                        name = proc.name()
                        proc.kill()
                        self.notes.append(f"ours: process {proc.pid} ({name}) was still running after the stop: killed")
                except psutil.Error:
                    pass


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


# -- report ----------------------------------------------------------------------------------


def _f(value: float | None, fmt: str = "{:.1f}") -> str:
    return "-" if value is None else fmt.format(value)


def print_scenario(sc: Scenario) -> None:
    print(f"\n{sc.title}")
    if sc.skipped:
        print(f"  {'ours' if sc.key.startswith('d') else sc.key}: {sc.skipped}")
        if not sc.results:
            return
    if sc.check:
        print(f"  {sc.check}")
    header = f"  {'load':<22}{'req/s':>9}{'items/s':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'errors':>8}"
    print(header + f"{'client CPU':>16}{'server CPU/item':>17}{'other load':>12}")
    for r in sc.results.values():
        wall = r.seconds or 1.0
        client = f"{r.client_cpu_s:.2f} s ({r.client_cpu_s / wall:.0%})"
        server = (_f(r.server_cpu_s * 1000 / (r.ok * r.items_per_request), "{:.2f} ms")
                  if r.server_cpu_s is not None and r.ok else "-")  # fmt: skip
        other = "-" if r.other_cpu_s is None else f"{r.other_cpu_s / (r.wall_s or 1.0):.2f}"
        print(f"  {r.load:<22}{r.rps:>9.1f}{r.items_per_s:>9.1f}{_f(r.pct(50)):>9}{_f(r.pct(95)):>9}"
              f"{_f(r.pct(99)):>9}{r.errors:>8}{client:>16}{server:>17}{other:>12}")  # fmt: skip
    if sc.bare is not None:
        print(f"  bare forward pass timed just before its concurrency-1 run: p50 {sc.bare[0]:.2f} ms, "
              f"p99 {sc.bare[1]:.2f} ms")  # fmt: skip


def print_goals(bench: Bench, bare_start: tuple[float, float], request_start: tuple[float, float]) -> None:
    s = bench.scenarios

    def mark(ok: bool | None) -> str:
        return "not measured" if ok is None else ("met" if ok else "NOT MET")

    def best(key: str) -> Result | None:
        return s[key].best() if key in s else None

    def res(key: str, which: str) -> Result | None:
        r = s[key].results.get(which) if key in s else None
        return r if r is not None and r.ok else None

    def c1_delta(key: str) -> float | None:
        c1 = res(key, "c1")
        return None if c1 is None or s[key].bare is None else (c1.pct(50) or 0.0) - s[key].bare[0]  # type: ignore[index]

    print(f"\nbaseline: bare forward pass, 1 input, {bench.args.threads} threads ({bench.bare.prepared}), "
          f"before any server: p50 {bare_start[0]:.2f} ms, p99 {bare_start[1]:.2f} ms")  # fmt: skip
    print(f"for scale, the least a request needs in process (orjson decode, forward, softmax, encode; no HTTP): "
          f"p50 {request_start[0]:.2f} ms, p99 {request_start[1]:.2f} ms")  # fmt: skip
    print("maximum throughput (answered inputs/s; the best closed-loop load of each):")
    for key in ("a", "b", "c", "d1", "d2"):
        r = best(key)
        if r is not None:
            print(f"  {s[key].title.split(':')[0]:<42} {r.items_per_s:8.1f}  ({r.load})")
    a_max, c_max = best("a"), best("c")
    for key in ("b", "c"):
        r = best(key)
        if r is not None and a_max is not None:
            print(f"  {s[key].title.split(':')[0]} / (a): {r.items_per_s / a_max.items_per_s:.2f}x")
    top = f"rate:{max(bench.args.rates)}" if bench.args.rates else ""
    a_top = res("a", top)
    for key in ("d1", "d2"):
        if key not in s:
            continue
        print(f"goals, ours {s[key].route}:")
        d_max, d_top = best(key), res(key, top)
        r1 = d_max.items_per_s / a_max.items_per_s if d_max and a_max else None
        print(
            f"  max throughput / article (a): {_f(r1, '{:.2f}x')}  goal >= 3x: {mark(None if r1 is None else r1 >= 3)}"
        )
        if d_top and a_top:
            p_d, p_a = d_top.pct(99) or 0.0, a_top.pct(99) or 0.0
            ok: bool | None = p_d < p_a and d_top.errors == 0
            text = f"ours {p_d:.1f} ms ({d_top.errors} errors) vs article {p_a:.1f} ms ({a_top.errors} errors)"
        else:
            ok, text = None, "-"
        rate = _f(bench.rate_base, "{:.0f}/s")
        print(f"  p99 at the article's maximum rate ({rate}, open loop): {text}  goal lower: {mark(ok)}")
        r3 = d_max.items_per_s / c_max.items_per_s if d_max and c_max else None
        print(
            f"  max throughput / LitServe (c): {_f(r3, '{:.2f}x')}  goal >= 1.0x: {mark(None if r3 is None else r3 >= 1)}"
        )
        delta = c1_delta(key)
        print(f"  concurrency-1 p50 - bare forward p50 (timed just before): {_f(delta, '{:+.2f} ms')}  goal <= 3 ms: "
              f"{mark(None if delta is None else delta <= 3)}")  # fmt: skip
    for key, label in (("a", "article (a)"), ("c", "LitServe (c)")):
        delta = c1_delta(key)
        if delta is not None:
            print(f"for comparison, {label} concurrency-1 p50 - bare forward p50: {delta:+.2f} ms")


# -- main ------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run (about 2 minutes): short loads, rough figures"
    )
    parser.add_argument("--threads", type=int, default=2, help="the total torch thread budget of each server")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections for single inputs")
    parser.add_argument("--batch", type=int, default=16, help="inputs per client-side batch in (b)")
    parser.add_argument("--batch-connections", type=int, default=4, help="wrk connections in (b)")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--max-batch-delay-ms", type=float, default=5.0)
    parser.add_argument("--seconds", type=int, default=None, help="each maximum-throughput run (default 8, quick 2)")
    parser.add_argument("--rate-seconds", type=float, default=None, help="each fixed-rate run (default 6, quick 1.5)")
    parser.add_argument("--c1-seconds", type=float, default=None, help="each concurrency-1 run (default 5, quick 1.5)")
    parser.add_argument("--rates", type=lambda t: [float(x) for x in t.split(",") if float(x) > 0], default=[0.5, 1.0],
                        help="fixed offered rates as fractions of the article's maximum (default 0.5,1.0)")  # fmt: skip
    parser.add_argument("--rate-base", type=float, default=None, help="req/s the rates are fractions of "
                        "(default: the article's measured maximum)")  # fmt: skip
    parser.add_argument("--scenarios", default="abcd", help="which to run, of a, b, c, d (default all)")
    parser.add_argument("--retrain", action="store_true", help=f"train again instead of using {CACHE}")
    args = parser.parse_args()
    quick = args.quick
    args.seconds = args.seconds or (2 if quick else 8)
    args.rate_seconds = args.rate_seconds or (1.5 if quick else 6.0)
    args.c1_seconds = args.c1_seconds or (1.5 if quick else 5.0)
    args.bare_iterations = 100 if quick else 300
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk; make bench does)", file=sys.stderr)
        return 2
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="rfbench-serve-"))
    try:
        cfg, weights, note = prepare_model(tmp, args.threads, args.retrain)
        import yaml

        num_classes = int(yaml.safe_load(cfg.read_text())["num_classes"])
        inputs = make_inputs(16)
        bodies = [json.dumps({"input": x.tolist()}).encode() for x in inputs]
        batch_bodies = [json.dumps({"batch_inputs": [inputs[(k * 5 + i) % 16].tolist() for i in range(args.batch)]
                                    }).encode() for k in range(4)]  # fmt: skip
        files, batch_files = [], []
        for name, group, out in (("single", bodies, files), ("batch", batch_bodies, batch_files)):
            for i, body in enumerate(group):
                out.append(tmp / f"{name}{i}.json")
                out[-1].write_bytes(body)
        bare = Bare(cfg, weights, args.threads, inputs)
        bare_start = bare.time(args.bare_iterations)
        request_start = bare.time_request(bodies, args.bare_iterations)

        import fastapi
        import litserve
        import torch

        load1 = os.getloadavg()[0]
        print(f"model: {note}")
        print(f"input: (3, {SIZE}, {SIZE}) float tensors as JSON lists, {len(bodies[0]) / 1024:.0f} KiB a body "
              f"({len(batch_bodies[0]) / 1024:.0f} KiB a batch of {args.batch}); 16 bodies in rotation")  # fmt: skip
        print(f"machine: {psutil.cpu_count()} cores shared by server and load generator; load average {load1:.2f}; "
              f"torch {torch.__version__}, fastapi {fastapi.__version__}, litserve {litserve.__version__}")  # fmt: skip
        print(f"thread budget {args.threads} per server; loads: max {args.seconds} s (wrk, 1 thread), concurrency 1 "
              f"{args.c1_seconds:g} s, fixed rates {args.rate_seconds:g} s (open loop)"
              + (" [--quick: figures are rough]" if quick else ""), flush=True)  # fmt: skip

        bench = Bench(args, tmp, bare)

        def progress(what: str) -> None:
            print(f"[{time.monotonic() - started:4.0f} s] {what}", file=sys.stderr, flush=True)

        if "a" in args.scenarios or "b" in args.scenarios:
            progress("(a), (b): the article's app")
            bench.run_article(num_classes, weights, bodies, batch_bodies, files, batch_files)
        if "c" in args.scenarios:
            progress("(c): LitServe")
            bench.run_lit(cfg, weights, bodies, files)
        if "d" in args.scenarios:
            progress("(d): ours (supervisor + web, one deployment)")
            bench.run_ours(cfg, weights, bodies, files)
        progress("done")
        for sc in bench.scenarios.values():
            print_scenario(sc)
        print_goals(bench, bare_start, request_start)
        runs = [(sc.key, r) for sc in bench.scenarios.values() for r in sc.results.values()]
        disturbed = [(k, r) for k, r in runs if r.other_cpu_s and r.other_cpu_s / (r.wall_s or 1.0) > DISTURBED]
        if disturbed:
            where = ", ".join(sorted({k for k, _ in disturbed}))
            print(textwrap.fill(
                f"warning: other processes on this machine used more than {DISTURBED} of a core (column 'other "
                f"load') during {len(disturbed)} of {len(runs)} runs (scenarios {where}): those figures are suspect; "
                f"rerun on a quiet machine.", width=120))  # fmt: skip
        for line in bench.notes:
            print(line)
        print(textwrap.fill(
            f"notes: latency of the fixed rates counts from each request's scheduled send time; the article's app "
            f"answers /predict on its event loop (as written), so it serves one request at a time whatever the "
            f"client does; ours runs with cache_size 0. Load average {load1:.2f} at start, {os.getloadavg()[0]:.2f} "
            f"at end; {time.monotonic() - started:.0f} s in all.", width=120))  # fmt: skip
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
