"""The diagnostic job: a real job type for tests, benchmarks and operators.

Parameters (all optional):

=================  ======  ===================================================================
``events``         int     emit this many log events (default 0)
``size``           int     pad each event's message to this many bytes (default 0)
``rate``           float   events per second; 0 sends as fast as possible (default 0)
``memory_mb``      int     allocate and touch this much memory, held until the end (default 0)
``ignore_sigterm`` bool    ignore SIGTERM (an uncooperative job; only SIGKILL ends it)
``grandchild``     bool    start a grandchild process that sleeps (it ignores SIGTERM too
                           when ``ignore_sigterm``); its pid is reported in an event
``grandchild_setsid`` bool the grandchild also leaves the job's session (``setsid``)
``default_sigterm`` bool   restore SIGTERM's default action (a SIGTERM kills the runner)
``spin``           float   then burn one core this long, stopping early when cancelled (a
                           CPU-bound job: load for benchmarks); says ``spinning`` when it starts
``sleep``          float   then sleep this long, stopping early when cancelled (default 0)
``report``         bool    first emit one event describing the process (``process`` field: pid,
                           sid, pgid, title, CUDA_VISIBLE_DEVICES, thread counts, cgroups, nice
                           of each thread, autogroup)
``exit_code``      int     then exit abruptly with this code, without a final event
``raise``          str     then raise ``RuntimeError`` with this message (the task fails)
=================  ======  ===================================================================
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from runner.context import JobContext

_GRANDCHILD = (
    "import signal, sys, time\nif sys.argv[1] == '1': signal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(3600)\n"
)


def run(ctx: JobContext) -> None:
    p: dict[str, Any] = ctx.params
    if p.get("report"):
        ctx.log("process report", process=_process_report())
    if p.get("ignore_sigterm"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if p.get("default_sigterm"):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    hold = None
    if p.get("memory_mb"):
        hold = bytearray(int(p["memory_mb"]) << 20)
        for offset in range(0, len(hold), 4096):  # touch every page so it is really resident
            hold[offset] = 1
        ctx.log(f"holding {p['memory_mb']} MiB")
    child = None
    if p.get("grandchild"):
        flag = "1" if p.get("ignore_sigterm") else "0"
        child = subprocess.Popen(
            [sys.executable, "-c", _GRANDCHILD, flag], start_new_session=bool(p.get("grandchild_setsid"))
        )
        ctx.log(f"grandchild started (pid {child.pid})", grandchild_pid=child.pid)

    _emit_events(ctx, int(p.get("events", 0)), int(p.get("size", 0)), float(p.get("rate", 0)))
    if p.get("spin"):
        _spin(ctx, float(p["spin"]))

    if p.get("sleep"):
        ctx.log(f"sleeping {p['sleep']} s")
        if p.get("ignore_sigterm"):
            time.sleep(float(p["sleep"]))
        else:
            ctx.wait(float(p["sleep"]))
    if "exit_code" in p and p["exit_code"] is not None:
        ctx.flush()
        os._exit(int(p["exit_code"]))
    if p.get("raise"):
        raise RuntimeError(str(p["raise"]))
    del hold


def _process_report() -> dict[str, Any]:
    """What this process sees of its own isolation and compute settings (tests check it)."""
    report: dict[str, Any] = {
        "pid": os.getpid(),
        "sid": os.getsid(0),
        "pgid": os.getpgid(0),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "cgroup": Path("/proc/self/cgroup").read_text().splitlines(),
        # Linux keeps a nice value per thread: every thread's, by thread id.
        "nice": os.getpriority(os.PRIO_PROCESS, 0),
        "thread_nice": {tid: os.getpriority(os.PRIO_PROCESS, int(tid)) for tid in os.listdir("/proc/self/task")},
    }
    try:
        report["autogroup"] = Path("/proc/self/autogroup").read_text().strip()  # "/autogroup-N nice K"
    except OSError:  # a kernel without autogroups
        report["autogroup"] = None
    try:
        from setproctitle import getproctitle

        report["title"] = getproctitle()
    except ImportError:  # pragma: no cover - a dependency
        report["title"] = None
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        report["torch_threads"] = torch.get_num_threads()
        report["interop_threads"] = torch.get_num_interop_threads()
    if "cv2" in sys.modules:
        report["opencv_threads"] = sys.modules["cv2"].getNumThreads()
    return report


def _spin(ctx: JobContext, seconds: float) -> None:
    """Keep one core busy for ``seconds`` (pure Python arithmetic, no system calls), checking
    for a stop every few milliseconds."""
    ctx.log(f"spinning for {seconds:g} s", spinning=True)
    deadline = time.monotonic() + seconds
    x = 0
    while time.monotonic() < deadline:
        for i in range(20_000):
            x ^= i
        ctx.check_stop()


def _emit_events(ctx: JobContext, count: int, size: int, rate: float) -> None:
    if count <= 0:
        return
    interval = 1.0 / rate if rate > 0 else 0.0
    start = time.perf_counter()
    for i in range(count):
        if interval:
            delay = start + i * interval - time.perf_counter()
            if delay > 0:
                ctx.wait(delay)
        elif i % 1000 == 0:
            ctx.check_stop()
        message = f"event {i + 1}/{count}"
        if size > len(message):
            message = message.ljust(size, ".")
        # sent_ns lets a subscriber measure end-to-end latency.
        ctx.log(message, i=i + 1, sent_ns=time.time_ns())
    ctx.progress(100, f"emitted {count} events")
