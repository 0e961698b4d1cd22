"""HTTP throughput and latency of web, against a bare Starlette baseline.

``python -m benchmarks.http [--workers N]`` starts the real service (supervisor + web with N
uvicorn workers, default 1, on loopback), then drives it with ``wrk`` (apt-get install wrk):

- ``GET /api/v2/tasks/{id}`` of a finished task, answered from web's read view (``web.view``);
  then the same with the view off (``RFUAV_WEB_VIEW_TASKS=0``: web → supervisor → web), the
  figure before reads moved to the edge;
- ``GET /api/v2/tasks?limit=20``, a page of the task list (read view);
- ``POST /api/v2/training/start`` of a valid diagnostic-sized training request while the CPU
  training limit is 0 (set through ``/api/v2/resources/config``), so every task is stored and
  queued but none runs; afterwards they are cancelled and the limit restored;
- the same GET body served by a bare Starlette endpoint (same uvicorn settings, same number of
  worker processes) in the same run: the ratio says what routing, the view and the envelope cost.

Goals: GET >= 3,000 req/s, POST >= 500 req/s, p99 <= 20 ms, GET/bare >= 0.7. The original
service published 312 req/s (GET) and 23.5 req/s (POST).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import httpx
import psutil

from tests.support.service import Service, free_port

DURATION = int(os.environ.get("BENCH_SECONDS", "5"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "16"))

_BARE_APP = """
import sys
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route
import uvicorn

BODY = open(sys.argv[2], "rb").read()

async def task(request):
    return Response(BODY, media_type="application/json")

app = Starlette(routes=[Route("/api/v2/tasks/{task_id}", task)])
if __name__ == "__main__":
    workers = int(sys.argv[3])
    uvicorn.run("bare:app" if workers > 1 else app, host="127.0.0.1", port=int(sys.argv[1]),
                log_level="warning", access_log=False, server_header=False, workers=workers)
"""


def _ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]


def wrk(url: str, script: Path | None = None, seconds: int = DURATION) -> dict[str, float]:
    """Run wrk (1 thread, CONNECTIONS connections); requests/s, p50/p99 in ms, non-2xx count."""
    cmd = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", url]
    if script is not None:
        cmd[1:1] = ["-s", str(script)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.MULTILINE).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.MULTILINE).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    return {"rps": rps, "p50": p50, "p99": p99, "non2xx": float(bad.group(1)) if bad else 0.0,
            "socket_errors": 1.0 if errors else 0.0}  # fmt: skip


def _post_script(tmp: Path, body: str) -> Path:
    script = tmp / "post.lua"
    escaped = body.replace("\\", "\\\\").replace('"', '\\"')
    script.write_text(
        textwrap.dedent(f'''
        wrk.method = "POST"
        wrk.body = "{escaped}"
        wrk.headers["Content-Type"] = "application/json"
    ''')
    )
    return script


def _cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and its children (web's workers)."""
    proc = psutil.Process(pid)
    return sum(sum(p.cpu_times()[:2]) for p in [proc, *proc.children(recursive=True)])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=1, help="web's uvicorn workers (RFUAV_WEB_WORKERS)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="rfbench"))
    bare: subprocess.Popen[bytes] | None = None
    try:
        env = {"RFUAV_LOG_LEVEL": "WARNING", "RFUAV_WEB_WORKERS": str(args.workers)}
        with Service(env=env) as svc:
            c = svc.client
            for split in ("train", "val"):
                for cls in ("a", "b"):
                    (svc.home / "bench" / split / cls).mkdir(parents=True, exist_ok=True)
            done = c.start_diagnostic(events=3)
            c.wait_for(done["task_id"], timeout=60)
            get_url = svc.url(f"/api/v2/tasks/{done['task_id']}")
            body = httpx.get(get_url).content
            (tmp / "body.json").write_bytes(body)

            # The bare baseline: the same bytes from a bare Starlette endpoint on uvicorn.
            port = free_port()
            (tmp / "bare.py").write_text(_BARE_APP)
            bare = subprocess.Popen(
                [sys.executable, str(tmp / "bare.py"), str(port), str(tmp / "body.json"), str(args.workers)], cwd=tmp
            )
            bare_url = f"http://127.0.0.1:{port}/api/v2/tasks/{done['task_id']}"
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(bare_url).content == body:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("bare baseline did not start")
                time.sleep(0.05)

            wrk(get_url, seconds=1)  # warm up
            wrk(bare_url, seconds=1)

            def cpu() -> tuple[float, float]:
                return _cpu(svc.web_pid), _cpu(svc.supervisor.pid)

            def measured(url: str, script: Path | None = None) -> dict[str, float]:
                before = cpu()
                r = wrk(url, script)
                r["web_us"], r["sup_us"] = ((a - b) / (r["rps"] * DURATION) * 1e6 for a, b in zip(cpu(), before))
                return r

            get = measured(get_url)
            base = wrk(bare_url)
            listed = measured(svc.url("/api/v2/tasks?limit=20"))
            # The same read with the view off: every read crosses to the supervisor.
            svc.stop_web()
            svc.env["RFUAV_WEB_VIEW_TASKS"] = "0"
            svc.start_web()
            wrk(get_url, seconds=1)
            crossing = measured(get_url)
            base_again = wrk(bare_url)
            svc.stop_web()
            del svc.env["RFUAV_WEB_VIEW_TASKS"]
            svc.start_web()

            limits = c.get_resources()["limits"]["cpu"]
            c.set_limits({"cpu": {"training": 0}})
            request = ('{"model": "resnet18", "num_classes": 2, "train_path": "bench/train", '
                       '"val_path": "bench/val", "save_path": "bench/out", "num_epochs": 1, '
                       '"batch_size": 2, "image_size": 32, "device": "cpu"}')  # fmt: skip
            post = measured(svc.url("/api/v2/training/start"), _post_script(tmp, request))
            created = c.get_all_tasks(status="pending", task_type="training", limit=1)["total_training"]
            started = time.monotonic()
            pending = list(c.iter_tasks(status="pending", task_type="training"))
            for task in pending:
                c.cancel_task(task["task_id"])
            cleanup = time.monotonic() - started
            left = c.get_all_tasks(status="pending", task_type="training", limit=1)["total_training"]
            c.set_limits({"cpu": {"training": limits["training"]}})
    finally:
        if bare is not None:
            bare.terminate()
            bare.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)

    def line(name: str, r: dict[str, float], goal: str) -> str:
        return (f"{name:<34} {r['rps']:>9.0f} req/s   p50 {r['p50']:6.2f} ms   p99 {r['p99']:6.2f} ms"
                f"   non-2xx {int(r['non2xx'])}   goal {goal}")  # fmt: skip

    workers = f"{args.workers} uvicorn worker{'s' if args.workers > 1 else ''} (bare: as many)"
    print(f"wrk: 1 thread, {CONNECTIONS} connections, {DURATION} s per run; web: {workers}")
    print(line("GET /api/v2/tasks/{id} (read view)", get, ">= 3000 req/s, p99 <= 20 ms"))
    print(line("bare Starlette, same body", base, "baseline"))
    print(line("GET /api/v2/tasks?limit=20", listed, "-"))
    print(line("GET /api/v2/tasks/{id}, view off", crossing, "the figure before"))
    print(line("bare Starlette, same body (again)", base_again, "baseline"))
    print(line("POST /api/v2/training/start", post, ">= 500 req/s, p99 <= 20 ms"))
    print(
        f"training tasks created and queued by the POST run: {created}; listed page by page and cancelled "
        f"in {cleanup:.1f} s ({len(pending)} cancelled, {left} left pending)"
    )
    for name, r in (("GET", get), ("GET, view off", crossing), ("list", listed), ("POST", post)):
        print(
            f"CPU per {name} request: web {r['web_us']:.0f} us, supervisor {r['sup_us']:.0f} us "
            f"(the machine's {psutil.cpu_count()} cores are shared with wrk and everything else)"
        )
    print(f"ratio GET / bare: {get['rps'] / base['rps']:.2f} (goal >= 0.7)")
    print(f"ratio GET with the view off / bare: {crossing['rps'] / base_again['rps']:.2f} (before reads at the edge)")
    print(f"vs the original: GET x{get['rps'] / 312:.1f} (312 req/s), POST x{post['rps'] / 23.5:.1f} (23.5 req/s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
