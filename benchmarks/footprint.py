"""The supervisor's memory: RSS idle and with 20 runners, against a bare ``import zmq`` process.

The daemon process alone is measured (runners and the warm-start fork server are separate
processes and are reported on their own line). Goal: ≤ 60 MB idle.

    python -m benchmarks.footprint [--mode cold|warm] [--runners 20]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import psutil

from tests.support.supervisor import SupervisorProcess

MB = 1024 * 1024


def bare_zmq_rss() -> int:
    """RSS of ``python -c "import zmq"`` kept alive until measured."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys, zmq; print('ok', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stdin is not None
    proc.stdout.readline()
    rss = int(psutil.Process(proc.pid).memory_info().rss)
    proc.stdin.close()
    proc.wait(10)
    return rss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("cold", "warm"), default="cold")
    parser.add_argument("--runners", type=int, default=20)
    args = parser.parse_args()
    base = bare_zmq_rss()
    with SupervisorProcess(env={"RFUAV_START_MODE": args.mode}) as sup:
        daemon = psutil.Process(sup.pid)
        idle = int(daemon.memory_info().rss)
        sup.call("set_limits", limits={"cpu": {"diagnostic": args.runners}})
        ids = [sup.submit(params={"sleep": 120, "events": 100}) for _ in range(args.runners)]
        for task_id in ids:
            sup.wait_task(task_id, lambda t: t["status"] == "running" and t["last_seq"] >= 5, 180, "runner up")
        busy = int(daemon.memory_info().rss)
        others = 0
        for child in daemon.children(recursive=True):
            try:
                # USS: warm-started runners share the fork server's pages; RSS would count
                # them twenty times over.
                others += int(child.memory_full_info().uss)
            except psutil.Error:
                continue
        started = time.monotonic()
        for task_id in ids:
            sup.call("cancel", task_id=task_id)
        for task_id in ids:
            sup.wait_final(task_id, 120)
        cancel_s = time.monotonic() - started
    print(f"bare `python -c 'import zmq'`        {base / MB:7.1f} MB")
    print(f"supervisor idle ({args.mode} start)         {idle / MB:7.1f} MB   ratio {idle / base:.2f}   (goal ≤ 60 MB)")
    print(f"supervisor with {args.runners} runners           {busy / MB:7.1f} MB   ratio {busy / base:.2f}")
    print(
        f"(its child processes, not counted: {others / MB:.1f} MB USS in all; {args.runners} cancels took {cancel_s:.2f} s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
