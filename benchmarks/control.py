"""Control-plane latency under load: every ``health``/``get`` answer timed while one job floods
events, one is OOM-killed at its memory limit and a burst of submissions arrives.

    python -m benchmarks.control [--events 200000] [--size 1024] [--burst 500] [--memory-mb 1024]

Baseline in the same run: the same probe against the same daemon at rest. Prints the worst,
p99 and median answer under load, each as a ratio to the idle figure, and the daemon's own
loop-lag gauge (``rfuav_supervisor_loop_lag_seconds``). Goal: no answer over 1 s.
"""

from __future__ import annotations

import argparse

from tests.support.control_load import ControlProbe, control_under_load
from tests.support.supervisor import SupervisorProcess


def idle_probe(sup: SupervisorProcess, answers: int = 2000) -> list[float]:
    task_id = sup.submit(params={})
    sup.wait_final(task_id)
    probe = ControlProbe(sup.settings.addresses.control, task_id)
    probe.start()
    while len(probe.latencies) < answers and probe.is_alive():
        probe.join(0.05)
    probe.stop()
    return sorted(probe.latencies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--burst", type=int, default=500)
    parser.add_argument("--memory-mb", type=int, default=1024)
    args = parser.parse_args()
    env = {
        "RFUAV_START_MODE": "cold",
        "RFUAV_LOG_LEVEL": "WARNING",
        "RFUAV_JOB_MEMORY_MB": str(args.memory_mb),
        "RFUAV_LIMIT_CPU_TRAINING": "0",
    }
    with SupervisorProcess(env=env) as sup:
        idle = idle_probe(sup)
        r = control_under_load(sup, events=args.events, size=args.size, burst=args.burst, memory_mb=args.memory_mb)
    i_max, i_p99, i_p50 = idle[-1], idle[int(len(idle) * 0.99)], idle[len(idle) // 2]
    print(
        f"load: {args.events} events of {args.size} B as fast as possible, one job OOM-killed at "
        f"{args.memory_mb} MiB, {args.burst} submissions"
    )
    print(f"flood job: {r['flood']['status']} ({r['events_stored']} events stored); oom job: {r['oom']['message']}")
    print(f"control answers timed: {r['answers']} under load, {len(idle)} idle; errors: {r['errors'] or 'none'}")
    for name, loaded, base in (("max", r["max_s"], i_max), ("p99", r["p99_s"], i_p99), ("p50", r["p50_s"], i_p50)):
        print(f"  {name}: {loaded * 1000:9.2f} ms under load, {base * 1000:7.3f} ms idle  (x{loaded / base:,.0f})")
    lag = r["loop_lag_max_s"]
    print(f"  daemon loop lag, worst over the last minute: {'n/a' if lag is None else f'{lag * 1000:.1f} ms'}")
    print(f"goal: max <= 1000 ms: {'met' if r['max_s'] <= 1.0 else 'NOT met'}")


if __name__ == "__main__":
    main()
