"""Cancel latency: cancel → every process of the job gone (runner and grandchild), through the
spawner, as the daemon cancels: SIGTERM to the group, a bounded wait (the grace period), then
SIGKILL to group and cgroup.

- ``kill``: SIGKILL at once — the floor (baseline) the others are compared with;
- ``cooperative``: the runner stops at its next safe point on SIGTERM, reports ``cancelled``;
- ``uncooperative``: runner and grandchild ignore SIGTERM; SIGKILL after ``--grace`` seconds.

Goal: cooperative ≤ 1 s median.

    python -m benchmarks.cancel [--runs 10] [--grace 1.0] [--mode warm|cold]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

from supervisor.cgroups import JobLimits
from supervisor.spawner import RunnerHandle, Spawner
from tests.support.processes import (
    EventSink,
    diagnostic_spec,
    remove_dir,
    settings_for,
    short_dir,
)

LIMITS = JobLimits(memory_mb=1024, cpus=0, pids=128)


async def gone(handle: RunnerHandle, pids: list[int], timeout: float = 30.0) -> None:
    """Wait for the runner's exit, then for every other process to have exited (a pidfd turns
    readable on exit: a zombie awaiting its reaper is gone, it holds no memory or CPU)."""
    await asyncio.wait_for(handle.wait(), timeout)
    loop = asyncio.get_running_loop()
    waits = []
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        done = loop.create_future()
        loop.add_reader(fd, lambda f=done: f.done() or f.set_result(None))
        waits.append((fd, done))
    try:
        await asyncio.wait_for(asyncio.gather(*(d for _, d in waits)), timeout)
    finally:
        for fd, _ in waits:
            loop.remove_reader(fd)
            os.close(fd)


async def cancel_once(spawner: Spawner, sink: EventSink, home: object, kind: str, grace: float) -> float:
    params = {"grandchild": True, "sleep": 120, "ignore_sigterm": kind == "uncooperative"}
    spec = diagnostic_spec(home, sink.endpoint, params)  # type: ignore[arg-type]
    handle = await spawner.spawn(spec, LIMITS)
    await sink.until(spec.task_id, lambda e: e.get("message", "").startswith("sleeping"), 120)
    pids = handle.alive_pids()
    assert len(pids) >= 2, pids
    started = time.perf_counter()
    if kind == "kill":
        handle.kill()
    else:
        handle.terminate()
        try:
            await asyncio.wait_for(handle.wait(), grace)
        except TimeoutError:
            pass
        if not handle.exited or handle.alive_pids():
            handle.kill()  # the grace is over, or the job left processes behind
    await gone(handle, pids)
    elapsed = time.perf_counter() - started
    assert handle.alive_pids() == []
    handle.cleanup()
    return elapsed


async def run(mode: str, runs: int, grace: float) -> dict[str, list[float]]:
    home = short_dir()
    sink = EventSink(home)
    spawner = Spawner(settings_for(home, mode))
    out: dict[str, list[float]] = {}
    try:
        await spawner.start()
        for kind in ("kill", "cooperative", "uncooperative"):
            out[kind] = [await cancel_once(spawner, sink, home, kind, grace) for _ in range(runs)]
        await spawner.stop()
    finally:
        sink.close()
        remove_dir(home)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--grace", type=float, default=1.0, help="SIGTERM → SIGKILL grace (s)")
    parser.add_argument("--mode", choices=("warm", "cold"), default="warm")
    args = parser.parse_args()
    results = asyncio.run(run(args.mode, args.runs, args.grace))
    print(f"cancel -> all processes of the job gone ({args.mode} start, grace {args.grace} s)")
    print(f"{'kind':<14} {'n':>3} {'median ms':>10} {'p95 ms':>9} {'x kill':>7}")
    base = statistics.median(results["kill"])
    for kind, samples in results.items():
        ordered = sorted(samples)
        p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
        med = statistics.median(ordered)
        print(f"{kind:<14} {len(ordered):>3} {med * 1000:>10.1f} {p95 * 1000:>9.1f} {med / base:>7.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
