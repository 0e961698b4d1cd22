"""Event throughput and latency: diagnostic runner → supervisor → subscriber, 1 KiB events,
on a quiet machine and beside one CPU-bound job per core.

Two paths, the same runner (``python -m runner spec.json``, the diagnostic job) and payloads:

- bare: the runner's XPUB straight into a bare SUB (no supervisor): what ZeroMQ and the runner
  deliver by themselves. The runner is started as the supervisor starts a job: as much nicer
  (``RFUAV_JOB_NICE``), in a CPU cgroup of the same weight (``RFUAV_JOB_CPU_WEIGHT``);
- service: the runner as a job of the real supervisor (validate, number, store in SQLite,
  publish) and out to a SUB on events-out.

The SUB does the same work on both paths: it splits each message's packed events and parses
each one (``_lines``).

Each path is measured twice in the same run: **quiet**, then **loaded** — one CPU-bound job
per core (the diagnostic job's ``spin``) submitted to the same supervisor, so the load has
the jobs' priority exactly as in production, and runs beside both paths alike. Printed for
each: events/s and events lost for a burst of ``--events`` events, p50/p99 end-to-end latency
at 1,000 events/s (the diagnostic job stamps ``sent_ns`` in each event), each service figure
beside its bare one with their ratio, the supervisor's CPU per event and loop lag, and the load
average. Each half runs ``--rounds`` rounds, each of both paths, bare first in one round and the
service first in the next (both paths see the same moments of a noisy machine, and neither always
follows the other); the figures are the rounds' medians, events lost their
sum, and each round's bare and service events/s and their ratio are printed beside the
medians, with the geometric mean of the rounds' ratios and its 95% interval (the rounds are
pairs). Goals: events/s ≥ 0.9 × bare, 0 lost, p99 ≤ 5 ms quiet and loaded.

    python -m benchmarks.events [--events 100000] [--size 1024] [--latency-events 5000] [--load N]
                                [--rounds 5] [--half both|quiet|loaded]
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import psutil
import scipy.stats
import zmq

from protocol import events as ev
from protocol.jobs import JobSpec
from protocol.settings import Settings
from supervisor.cgroups import CgroupError, Cgroups, JobCgroup, JobLimits, instance_key
from supervisor.jobs import cores
from tests.support.supervisor import SupervisorProcess

REPO = Path(__file__).resolve().parents[1]
#: Seconds each load job spins at most (it is cancelled when the loaded half is done).
SPIN_SECONDS = 1_800


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def _lines(message: list[bytes]) -> list[bytes]:
    """The events of ``[task_id, packed, ...]`` (a trailing ``PLAIN`` left out), each line as it
    came: the subscriber does the same work on both paths, splitting and parsing each event.
    The service numbers a published run's lines after the first by their place, and a consumer
    that wants each line's ``seq`` written into it pays for that (``protocol.events.unpack``);
    the bare runner's stream has no ``seq`` to write, so neither path's timing includes it."""
    frames = message[1:-1] if message[-1] == ev.PLAIN else message[1:]
    return [line for frame in frames for line in frame.split(b"\n")]


def _collect(sock: zmq.Socket[bytes], n: int, timeout: float = 300.0) -> tuple[list[dict[str, Any]], float, float, int]:
    """Receive until the runner's ``n`` diagnostic events (and its final status) arrived; also
    returns how many messages brought them."""
    events: list[dict[str, Any]] = []
    first = last = 0.0
    messages = 0
    deadline = time.monotonic() + timeout
    while True:
        if not sock.poll(int(max(0.0, deadline - time.monotonic()) * 1000)):
            break
        message = sock.recv_multipart()
        now = time.time_ns()
        before = len(events)
        final = False
        for data in _lines(message):
            event = orjson.loads(data)
            if "i" in event:
                event["_recv_ns"] = now
                events.append(event)
                if first == 0.0:
                    first = time.perf_counter()
                last = time.perf_counter()
            final = final or ev.is_final(event)
        messages += len(events) > before  # (the service's task records and other tasks' events left out)
        if final:
            break
    return events, first, last, messages


def _summary(events: list[dict[str, Any]], n: int, first: float, last: float, messages: int) -> dict[str, float]:
    seen = {e["i"] for e in events}
    rate = (len(events) - 1) / (last - first) if last > first else 0.0
    lat = [(e["_recv_ns"] - e["sent_ns"]) / 1e6 for e in events]
    return {
        "rate": rate,
        "lost": n - len(seen),
        "p50": _percentile(lat, 50) if lat else float("nan"),
        "p99": _percentile(lat, 99) if lat else float("nan"),
        "per_msg": len(events) / messages if messages else 0.0,
    }


class Bare:
    """The baseline: the runner into a bare SUB, started as the supervisor starts a job (as
    much nicer, in a CPU cgroup of the same weight where this host allows)."""

    def __init__(self, settings: Settings) -> None:
        self.nice = settings.job_nice
        self.weight = settings.job_cpu_weight
        self.tmp = Path(tempfile.mkdtemp(prefix="rfb", dir="/tmp"))
        self.cgroups = Cgroups(instance_key(self.tmp))
        self.cgroups.jobs_cpu_weight = self.weight
        self.cgroups.prepare_without_moving()  # never moves this process
        self.note = ""
        self._ids = itertools.count(1)

    def _cgroup(self, task_id: str) -> JobCgroup | None:
        try:
            cg = self.cgroups.create(task_id, JobLimits(0, 0.0, 0, self.weight))
        except CgroupError as exc:
            self.note = f"bare runner without a job cgroup: {exc}"
            return None
        if cg.warning:
            self.note = f"bare runner: {cg.warning}"
        return cg

    def run(self, n: int, size: int, rate: float) -> dict[str, float]:
        ctx: zmq.Context[Any] = zmq.Context()
        sock = ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.setsockopt(zmq.RCVHWM, 100_000)
        endpoint = f"ipc://{self.tmp / 'ev.sock'}"
        sock.bind(endpoint)
        task_id = f"bare{next(self._ids)}"
        task_dir = self.tmp / task_id
        task_dir.mkdir()
        cg = self._cgroup(task_id)
        try:
            spec = JobSpec(
                task_id=task_id,
                task_type="diagnostic",
                job="diagnostic",
                params={"events": n, "size": size, "rate": rate},
                device="cpu",
                host_device="cpu",
                task_dir=str(task_dir),
                events_endpoint=endpoint,
                cgroup_procs=cg.procs_files if cg is not None else [],
                nice=self.nice,
            )
            (task_dir / "spec.json").write_bytes(spec.dump())
            env = {**os.environ, "PYTHONPATH": str(REPO), "NO_ALBUMENTATIONS_UPDATE": "1"}
            proc = subprocess.Popen(
                [sys.executable, "-m", "runner", str(task_dir / "spec.json")], env=env, start_new_session=True
            )
            events, first, last, messages = _collect(sock, n)
            proc.wait(60)
            return _summary(events, n, first, last, messages)
        finally:
            sock.close(linger=0)
            ctx.term()
            if cg is not None:
                cg.remove()
            # The task directory (the runner's journal) stays until ``close``, as a task's does
            # in the service. Removed here, its page cache would go to the run after it, the
            # service's: on this VM, pages freed just before take a write at a tenth of the cost
            # of others (``benchmarks.pagecache``), and the service's rounds gained from it.

    def close(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def service(sup: SupervisorProcess, n: int, size: int, rate: float) -> dict[str, float]:
    """The runner as a job of the supervisor, out to a SUB on events-out."""
    sub = sup.subscribe()
    daemon = psutil.Process(sup.pid)
    cpu_before = sum(daemon.cpu_times()[:2])
    task_id = sup.submit(params={"events": n, "size": size, "rate": rate})
    events, first, last, messages = _collect(sub.sock, n)
    cpu = sum(daemon.cpu_times()[:2]) - cpu_before
    sub.close()
    task = sup.wait_final(task_id, timeout=120)
    assert task["status"] == "completed", task
    lag = sup.call("health")["loop_lag_max_seconds"] * 1e3
    return {**_summary(events, n, first, last, messages), "cpu_us": cpu / n * 1e6, "lag_ms": lag}


def start_load(sup: SupervisorProcess, count: int) -> list[str]:
    """``count`` CPU-bound jobs of the service; returns once every one of them spins."""
    sub = sup.subscribe()
    ids = [sup.submit(params={"spin": SPIN_SECONDS}) for _ in range(count)]
    waiting = set(ids)
    deadline = time.monotonic() + 120
    while waiting:
        task_id, event = sub.recv(timeout=max(0.1, deadline - time.monotonic()))
        if event.get("spinning"):
            waiting.discard(task_id)
    sub.close()
    return ids


def stop_load(sup: SupervisorProcess, ids: list[str]) -> None:
    for task_id in ids:
        sup.call("cancel", task_id=task_id)
    for task_id in ids:
        sup.wait_final(task_id, timeout=60)


def measure(sup: SupervisorProcess, bare: Bare, args: argparse.Namespace) -> dict[str, Any]:
    """Throughput then latency of both paths (bare first in even rounds, the service first in
    odd ones), under whatever runs beside them now: ``args.rounds`` times, combined
    (``_combine``)."""
    rounds = []
    for i in range(args.rounds):
        paths = {
            "bare": lambda n, rate: bare.run(n, args.size, rate),
            "svc": lambda n, rate: service(sup, n, args.size, rate),
        }
        order = ("bare", "svc") if i % 2 == 0 else ("svc", "bare")
        figures = {f"{p}_rate": paths[p](args.events, 0) for p in order}
        figures |= {f"{p}_lat": paths[p](args.latency_events, 1000) for p in order}
        rounds.append(figures)
    out: dict[str, Any] = {key: _combine([r[key] for r in rounds]) for key in rounds[0]}
    out["rounds"] = [(r["bare_rate"]["rate"], r["svc_rate"]["rate"]) for r in rounds]
    out["loadavg"] = {"1min": os.getloadavg()[0]}
    return out


def _combine(figures: list[dict[str, float]]) -> dict[str, float]:
    """The rounds' medians; events lost and the loop lag: their sum and their worst."""
    out = {key: statistics.median(f[key] for f in figures) for key in figures[0]}
    out["lost"] = sum(f["lost"] for f in figures)
    if "lag_ms" in out:
        out["lag_ms"] = max(f["lag_ms"] for f in figures)
    return out


def paired_ratio(rounds: list[tuple[float, float]]) -> tuple[float, float, float]:
    """The geometric mean of the rounds' service/bare ratios, and its 95% confidence interval
    (Student's t over their logarithms): the rounds are pairs, each pair measured at the same
    moment of a noisy machine, so their ratios are the samples."""
    logs = [math.log(s / b) for b, s in rounds if b > 0 and s > 0]
    if len(logs) < 2:  # (a round that delivered nothing has no ratio)
        return (math.exp(logs[0]) if logs else math.nan,) + (math.nan, math.nan)
    mean = statistics.fmean(logs)
    half = scipy.stats.t.ppf(0.975, len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs))
    return math.exp(mean), math.exp(mean - half), math.exp(mean + half)


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "n/a"


def report(title: str, m: dict[str, Any]) -> None:
    br, sr, bl, sl = m["bare_rate"], m["svc_rate"], m["bare_lat"], m["svc_lat"]
    print(f"{title}  (load average {m['loadavg']['1min']:.1f} on {os.cpu_count()} cores)")
    print(f"  {'':26}{'events/s':>10} {'lost':>5}   {'p50 ms':>7} {'p99 ms':>7} {'lost':>5}")
    for name, r, lat in (("bare runner→SUB", br, bl), ("runner→supervisor→SUB", sr, sl)):
        print(
            f"  {name:26}{r['rate']:10,.0f} {r['lost']:5.0f}   {lat['p50']:7.3f} {lat['p99']:7.3f} {lat['lost']:5.0f}"
        )
    print(
        f"  {'ratio service/bare':26}{_ratio(sr['rate'], br['rate']):>10} {'':5}   "
        f"{_ratio(sl['p50'], bl['p50']):>7} {_ratio(sl['p99'], bl['p99']):>7}"
    )
    print(f"  events per message received in the burst: bare {br['per_msg']:.0f}, service {sr['per_msg']:.0f}")
    if len(m["rounds"]) > 1:
        each = ", ".join(f"{b / 1e3:.0f}k/{s / 1e3:.0f}k {_ratio(s, b)}" for b, s in m["rounds"])
        print(f"  each round, bare/service events/s and ratio: {each}")
        mean, low, high = paired_ratio(m["rounds"])
        print(f"  paired rounds: geometric mean of the ratios {mean:.2f}, 95% interval {low:.2f}–{high:.2f}")
    # The machine is shared: the supervisor's own CPU per event says what one free core would
    # sustain, whatever else runs.
    print(
        f"  supervisor CPU per event {sr['cpu_us']:.1f} µs in the burst (one free core: "
        f"~{1e6 / sr['cpu_us']:,.0f} events/s), {sl['cpu_us']:.0f} µs at 1,000/s; "
        f"loop lag, worst of the last minute: {sl['lag_ms']:.1f} ms",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000, help="events of the throughput burst")
    parser.add_argument("--size", type=int, default=1024, help="bytes per event message")
    parser.add_argument("--latency-events", type=int, default=5_000, help="events sent at 1,000/s")
    parser.add_argument("--load", type=int, default=cores(), help="CPU-bound jobs beside the loaded half")
    parser.add_argument("--rounds", type=int, default=5, help="alternating bare/service rounds per half")
    parser.add_argument("--half", choices=("both", "quiet", "loaded"), default="both", help="which half to run")
    args = parser.parse_args()
    print(
        f"{args.events} events of {args.size} B as fast as the runner sends; "
        f"{args.latency_events} at 1,000 events/s; load: {args.load} CPU-bound job(s); "
        f"medians of {args.rounds} round(s)",
        flush=True,
    )
    with SupervisorProcess(env={"RFUAV_START_MODE": "cold"}) as sup:
        bare = Bare(sup.settings)
        try:
            if args.half != "loaded":
                report("quiet", measure(sup, bare, args))
            if args.half != "quiet":
                ids = start_load(sup, args.load)
                try:
                    loaded = measure(sup, bare, args)
                finally:
                    stop_load(sup, ids)
                report(
                    f"loaded: {args.load} spinning job(s) (nice +{sup.settings.job_nice}, "
                    f"cpu weight {sup.settings.job_cpu_weight})",
                    loaded,
                )
        finally:
            bare.close()
        if bare.note:
            print(f"  note: {bare.note}")
    print("goals: events/s ≥ 0.9 × bare, 0 lost, p99 ≤ 5 ms (quiet and loaded)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
