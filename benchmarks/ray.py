"""Jobs on Ray against local jobs in one run: submit → first event, cancel → all gone, events/s.

Event latency too, and Ray's own job API (``stop_job``, ``tail_job_logs``) beside ours where it
applies.

``python -m benchmarks.ray`` (about 5 minutes; ``--quick``: a smoke run of about 2; ``--help``).

Set-up, all on this machine: a Ray cluster (``ray.cluster_utils.Cluster``: a head without CPUs
and one worker node of 2 CPUs, as ``tests/ray``), then real supervisor daemons with
``RFUAV_DIAGNOSTIC=1``, each with a subscriber on its events-out (the lanes):

- ``local``: ``RFUAV_START_MODE=warm`` (fork server and standby; ready once a first job ran), the
  baseline every Ray figure is compared with;
- ``ray``: ``RFUAV_EXECUTOR=ray`` on the cluster, events relayed through each job's runner host;
- ``ray-direct``: the same with ``RFUAV_RAY_EVENTS=direct`` (the runner connects to the
  supervisor's events socket; ``--no-direct`` leaves it out);
- ``ray-tcp``: the same with ``RFUAV_RAY_EVENTS=tcp`` and ``RFUAV_EVENTS_TCP=127.0.0.1:0`` (the
  runner connects to the supervisor's TCP port as a CURVE client: encryption and a ZAP check
  included, as between nodes; ``--no-tcp`` leaves it out).

``--parts`` picks the parts to run (``1234``: all; e.g. ``34``: events/s and latency only).

Every supervisor has ``RFUAV_GRACE_SECONDS=--grace`` and ``RFUAV_JOB_MEMORY_MB=1024``. Parts:

1. submit → first event: a diagnostic job (``events=1``) submitted on the control socket, until
   the runner's first event (its ``running`` status) arrives on events-out; the lanes take turns.
2. cancel → all gone: a diagnostic job that sleeps with a grandchild in a session of its own
   (``grandchild_setsid``), cooperative or ignoring SIGTERM (``ignore_sigterm``: SIGKILL after the
   grace). From the ``cancel`` request to the final ``cancelled`` event ("final"), to the runner's
   exit ("runner") and to the exit of both ("gone"; a pidfd each, as ``benchmarks.cancel``); what
   had not exited when the final status was seen ("left@final"), and what psutil still finds
   alive 2 s later ("left@+2s"; killed then). Beside it, when the Ray job server is up, Ray's own
   job API on the same cluster: ``JobSubmissionClient.submit_job`` of an equivalent entrypoint (a
   Python script that ignores SIGTERM or not and starts the same setsid grandchild),
   ``stop_job``, then ``get_job_status`` every 10 ms until ``STOPPED`` ("final"), the same
   pidfds and checks. Ray's grace is ``RAY_JOB_STOP_WAIT_TIME_S`` = ``--grace`` (whole seconds).
   One more Ray row: the grandchild daemonised (setsid + double fork, so that it is no longer the
   entrypoint's descendant); the diagnostic job cannot do that, so it has no row of ours.
3. events/s: a diagnostic job with ``events=--events``, ``size=--size``, ``rate=0``: events/s from
   the submission to the last event on events-out, and from the first to the last; events lost on
   the subscriber, and the stored events read back with ``logs`` (every ``seq`` from 1, every
   ``i`` from 1 to N).
4. event latency: a diagnostic job at ``--latency-rate`` events/s, each event's ``sent_ns`` to its
   arrival on events-out; beside it Ray's ``tail_job_logs`` for a job printing as many stamped
   lines at the same rate (each line's stamp to its arrival in the tail; lines printed before the
   tail was connected are left out).

"other load": what the rest of the machine used meanwhile, in cores (this machine is shared):
busy CPU time of the whole machine less that of this process and all its descendants (the
supervisors, the Ray cluster, the jobs), per wall second of the measurement. Rows above 0.25 are
named in a warning: their figures are suspect.

Ray's job server (the dashboard) needs ``ray[default]`` (aiohttp, …), which the ``ray`` extra does
not install: without it the Ray job API rows say ``not measured`` and why. To measure them, put
the extra's packages on ``PYTHONPATH`` (every Ray process inherits it), e.g. ``pip install
--target DIR`` of what ``pip install --dry-run 'ray[default]==<version>'`` lists.

Cleanup: every supervisor stopped, the cluster shut down, and every process this run started
(all descendants seen, each grandchild reported) checked gone; a survivor is killed and named.
The exit status is 0 unless the benchmark itself breaks.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import select
import shutil
import signal
import statistics
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import zmq

from protocol.events import is_final
from tests.support.supervisor import EventSubscriber, SupervisorProcess

#: Other processes using more than this share of a core during a measurement make it suspect.
DISTURBED = 0.25
#: How long a step may take before the benchmark gives up on it (seconds).
STEP_TIMEOUT = 120.0

# -- measuring -------------------------------------------------------------------------------

#: Every process of this run seen so far (pid → create time): checked gone at the end.
SEEN: dict[int, float] = {}
#: Notes printed at the end (survivors killed, parts not measured).
NOTES: list[str] = []


def _machine_busy() -> float:
    """CPU seconds the whole machine has been busy (all cores; idle and iowait excluded)."""
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


def _our_cpu() -> float:
    """CPU seconds of this process and every live descendant, each with its reaped children
    (so a job that ended meanwhile still counts: its parent reaped it). Records what it sees."""
    me = psutil.Process()
    total = 0.0
    for p in [me, *me.children(recursive=True)]:
        try:
            with p.oneshot():
                t = p.cpu_times()
                SEEN.setdefault(p.pid, p.create_time())
        except psutil.Error:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


@dataclass
class Load:
    """Wall time and the rest of the machine's CPU over one or more measurement windows."""

    wall: float = 0.0
    other: float = 0.0

    @contextmanager
    def window(self) -> Iterator[None]:
        ours, busy, wall = _our_cpu(), _machine_busy(), time.monotonic()
        try:
            yield
        finally:
            self.wall += time.monotonic() - wall
            self.other += max(0.0, (_machine_busy() - busy) - (_our_cpu() - ours))

    @property
    def cores(self) -> float | None:
        return self.other / self.wall if self.wall > 0 else None


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def med(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def alive(pid: int, created: float) -> bool:
    """The process that was created at ``created`` runs (a zombie has exited; a reused pid is
    another process)."""
    try:
        p = psutil.Process(pid)
        return p.status() != psutil.STATUS_ZOMBIE and abs(p.create_time() - created) < 0.01
    except psutil.Error:
        return False


def created(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def kill_survivor(pid: int, created_at: float, what: str) -> None:
    """SIGKILL ``pid`` if it is still the process this run started (same create time)."""
    if alive(pid, created_at):
        with suppress(psutil.Error):
            name = " ".join(psutil.Process(pid).cmdline())[:80]
            os.kill(pid, signal.SIGKILL)
            NOTES.append(f"{what}: pid {pid} ({name}) was still running: killed")


class PidWatch:
    """A pidfd per process: the moment each exits (a zombie has exited)."""

    def __init__(self, pids: list[int]) -> None:
        self.fds: dict[int, int] = {}
        self.exited: dict[int, float] = {}
        for pid in pids:
            try:
                self.fds[os.pidfd_open(pid)] = pid
            except ProcessLookupError:
                self.exited[pid] = time.perf_counter()

    def check(self, timeout: float = 0.0) -> None:
        if not self.fds:
            return
        ready, _, _ = select.select(list(self.fds), [], [], timeout)
        now = time.perf_counter()
        for fd in ready:
            self.exited[self.fds.pop(fd)] = now
            os.close(fd)

    @property
    def done(self) -> bool:
        return not self.fds

    def last(self, since: float) -> float | None:
        return max(self.exited.values()) - since if self.done and self.exited else None

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()


# -- lanes: one supervisor each ----------------------------------------------------------------


@dataclass
class Lane:
    name: str
    sup: SupervisorProcess
    sub: EventSubscriber
    loads: dict[str, Load] = field(default_factory=dict)

    def load(self, part: str) -> Load:
        return self.loads.setdefault(part, Load())

    def submit(self, params: dict[str, Any]) -> str:
        return self.sup.submit("diagnostic", params)

    def until(
        self, task_id: str, predicate: Callable[[dict[str, Any]], bool], timeout: float = STEP_TIMEOUT
    ) -> dict[str, Any]:
        """Receive until an event of ``task_id`` satisfies ``predicate``; an earlier final event of
        the task ends the wait with an error."""
        deadline = time.monotonic() + timeout
        while True:
            tid, event = self.sub.recv(max(0.001, deadline - time.monotonic()))
            if tid != task_id:
                continue
            if predicate(event):
                return event
            if is_final(event):
                raise RuntimeError(f"{self.name}: task {task_id} ended first: {event.get('message')}")

    def final(self, task_id: str, timeout: float = STEP_TIMEOUT) -> dict[str, Any]:
        return self.until(task_id, is_final, timeout)


def running(event: dict[str, Any]) -> bool:
    return event.get("kind") == "status" and event.get("status") == "running"


def start_lane(name: str, env: dict[str, str], grace: int) -> Lane:
    base = {"RFUAV_DIAGNOSTIC": "1", "RFUAV_GRACE_SECONDS": str(grace), "RFUAV_JOB_MEMORY_MB": "1024"}
    started = time.monotonic()
    sup = SupervisorProcess(env={**base, **env}, start_timeout=180)
    try:
        sup.start()
        lane = Lane(name, sup, sup.subscribe())
        # The first job waits for the fork server (local) or the first Ray worker (ray).
        task_id = lane.submit({"events": 1})
        done = lane.final(task_id, 180)
        if done.get("status") != "completed":
            raise RuntimeError(f"warm-up job ended {done.get('status')}: {done.get('message')}")
    except BaseException:
        print(sup.log_text()[-3000:], file=sys.stderr)
        sup.close()
        raise
    print(f"  supervisor {name:<11} ready in {time.monotonic() - started:5.1f} s (first job included)", flush=True)
    return lane


# -- part 1: submit → first event ------------------------------------------------------------------


def first_event(lanes: list[Lane], tries: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {lane.name: [] for lane in lanes}
    for i in range(tries + 1):  # the first round warms each path up; not counted
        for lane in lanes:
            time.sleep(0.3)  # jobs a little apart, as submissions are (the standby is forked again)
            with lane.load("start").window():
                t0 = time.perf_counter()
                task_id = lane.submit({"events": 1})
                lane.until(task_id, running)
                elapsed = time.perf_counter() - t0
                done = lane.final(task_id)
            if done.get("status") != "completed":
                raise RuntimeError(f"{lane.name}: job ended {done.get('status')}: {done.get('message')}")
            if i:
                out[lane.name].append(elapsed)
    return out


# -- part 2: cancel → all gone -----------------------------------------------------------------------


@dataclass
class Cancel:
    final: list[float] = field(default_factory=list)
    runner: list[float] = field(default_factory=list)
    gone: list[float] = field(default_factory=list)
    #: Processes not yet exited when the final status was seen, and still alive 2 s later.
    left_final: int = 0
    left_after: int = 0
    tries: int = 0
    statuses: set[str] = field(default_factory=set)
    #: From asking for the stop to the stop call's return (Ray's job API).
    call: list[float] = field(default_factory=list)

    def record(self, t0: float, final_at: float | None, status: str, watch: PidWatch, runner: int,
               births: dict[int, float | None], what: str) -> None:  # fmt: skip
        """One cancel: its times, and what was left of it (killed: it is ours)."""
        watch.close()
        if runner in watch.exited:
            self.runner.append(watch.exited[runner] - t0)
        self.tries += 1
        self.statuses.add(status)
        if final_at is not None:
            self.final.append(final_at - t0)
        if (gone := watch.last(t0)) is not None:
            self.gone.append(gone)
        for pid, born in births.items():
            exited = watch.exited.get(pid)
            if final_at is None or exited is None or exited > final_at:
                self.left_final += 1
            if born is not None and alive(pid, born):
                self.left_after += 1
                kill_survivor(pid, born, what)


def cancel_ours(lane: Lane, uncooperative: bool, result: Cancel) -> None:
    params = {"sleep": 120, "grandchild": True, "grandchild_setsid": True, "ignore_sigterm": uncooperative}
    task_id = lane.submit(params)
    run = lane.until(task_id, running)
    match = re.search(r"pid (\d+)", str(run.get("message")))
    assert match, run
    runner = int(match.group(1))
    grandchild = int(lane.until(task_id, lambda e: "grandchild_pid" in e)["grandchild_pid"])
    lane.until(task_id, lambda e: str(e.get("message", "")).startswith("sleeping"))
    births = {pid: created(pid) for pid in (runner, grandchild)}
    SEEN.update({pid: born for pid, born in births.items() if born is not None})
    watch = PidWatch([runner, grandchild])
    final_at: float | None = None
    status = "?"
    with lane.load("cancel").window():
        t0 = time.perf_counter()
        lane.sup.call("cancel", task_id=task_id)
        deadline = time.monotonic() + STEP_TIMEOUT
        while time.monotonic() < deadline:
            try:
                while final_at is None:  # whatever the subscriber already holds, without waiting
                    tid, event = lane.sub.recv(0)
                    if tid == task_id and is_final(event):
                        watch.check()  # exits before this moment are stamped before it
                        final_at, status = time.perf_counter(), str(event.get("status"))
            except TimeoutError:
                pass
            if final_at is not None and (watch.done or time.perf_counter() - final_at > 2.0):
                break
            zmq.select([lane.sub.sock, *watch.fds], [], [], 0.1)
            watch.check()
    result.record(t0, final_at, status, watch, runner, births, f"{lane.name}: task {task_id} 2 s after its cancel")


JOB_SCRIPT = textwrap.dedent(
    """\
    import os, signal, subprocess, sys, time

    GRANDCHILD = (
        "import signal, sys, time\\n"
        "if sys.argv[1] == '1': signal.signal(signal.SIGTERM, signal.SIG_IGN)\\n"
        "time.sleep(3600)\\n"
    )
    DAEMON = (
        "import os, signal, sys, time\\n"
        "if sys.argv[1] == '1': signal.signal(signal.SIGTERM, signal.SIG_IGN)\\n"
        "pid = os.fork()\\n"
        "if pid:\\n"
        "    print(pid, flush=True)\\n"
        "    os._exit(0)\\n"
        "time.sleep(3600)\\n"
    )
    mode = sys.argv[1]
    if mode == "tail":
        count, rate = int(sys.argv[2]), float(sys.argv[3])
        print("ready", flush=True)
        time.sleep(3.0)  # the tail connects meanwhile
        start = time.perf_counter()
        for i in range(count):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            print(f"line {i + 1} {time.time_ns()}", flush=True)
        sys.exit(0)
    flag = "0" if mode == "cooperative" else "1"
    if flag == "1":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print(f"runner_pid={os.getpid()}", flush=True)
    if mode == "daemonised":
        child = subprocess.Popen([sys.executable, "-c", DAEMON, flag], start_new_session=True,
                                 stdout=subprocess.PIPE, text=True)
        grandchild = int(child.stdout.readline())
        child.wait()
    else:
        grandchild = subprocess.Popen([sys.executable, "-c", GRANDCHILD, flag], start_new_session=True).pid
    print(f"grandchild_pid={grandchild}", flush=True)
    print("sleeping", flush=True)
    time.sleep(120)
    """
)


class RayJobs:
    """Ray's job API on the benchmark's cluster (its dashboard's job server)."""

    def __init__(self, url: str, workdir: Path) -> None:
        from ray.job_submission import JobSubmissionClient

        self.client = JobSubmissionClient(url)
        self.script = workdir / "ray_job.py"
        self.script.write_text(JOB_SCRIPT)
        self.load: dict[str, Load] = {}

    def submit(self, *args: object) -> str:
        entrypoint = " ".join([sys.executable, str(self.script), *map(str, args)])
        return str(self.client.submit_job(entrypoint=entrypoint))

    def logs_until(self, job_id: str, marker: str, timeout: float = STEP_TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = str(self.client.get_job_logs(job_id))
            if marker in text:
                return text
            status = self.client.get_job_status(job_id)
            if status.is_terminal():
                raise RuntimeError(f"Ray job {job_id} ended {status} before {marker!r}: {text[-500:]}")
            time.sleep(0.05)
        raise TimeoutError(f"Ray job {job_id}: no {marker!r} in its logs within {timeout} s")

    def cancel(self, mode: str, result: Cancel) -> None:
        job_id = self.submit(mode)
        text = self.logs_until(job_id, "sleeping")
        runner = int(re.search(r"runner_pid=(\d+)", text).group(1))  # type: ignore[union-attr]
        grandchild = int(re.search(r"grandchild_pid=(\d+)", text).group(1))  # type: ignore[union-attr]
        pids = [runner, grandchild]
        with suppress(psutil.Error):  # the ``sh -c`` Ray starts the entrypoint with, if it kept one
            parent = psutil.Process(runner).parent()
            if parent is not None and parent.name() in ("sh", "dash", "bash"):
                pids.append(parent.pid)
        births = {pid: created(pid) for pid in pids}
        SEEN.update({pid: born for pid, born in births.items() if born is not None})
        watch = PidWatch(pids)
        stopped_at: float | None = None
        status = "?"
        with self.load.setdefault(mode, Load()).window():
            t0 = time.perf_counter()
            self.client.stop_job(job_id)
            result.call.append(time.perf_counter() - t0)
            deadline = time.monotonic() + STEP_TIMEOUT
            while time.monotonic() < deadline:
                watch.check()
                if stopped_at is None:
                    state = self.client.get_job_status(job_id)
                    if state.is_terminal():
                        watch.check()  # exits before this moment are stamped before it
                        stopped_at, status = time.perf_counter(), str(state.value)
                if stopped_at is not None and (watch.done or time.perf_counter() - stopped_at > 2.0):
                    break
                watch.check(0.01)
        result.record(t0, stopped_at, status, watch, runner, births, f"Ray job API ({mode}): 2 s after {status}")

    def tail(self, count: int, rate: float) -> tuple[list[float], Load]:
        """Latency (s) of each stamped line from its print to its arrival through ``tail_job_logs``."""
        job_id = self.submit("tail", count, rate)
        load = Load()

        async def follow() -> list[tuple[int, str]]:
            got: list[tuple[int, str]] = []
            async for chunk in self.client.tail_job_logs(job_id):
                now = time.time_ns()
                got.extend((now, line) for line in chunk.splitlines())
                if any(line.startswith(f"line {count} ") for _, line in got[-50:]):
                    break
            return got

        with load.window():
            lines = asyncio.run(asyncio.wait_for(follow(), STEP_TIMEOUT))
        ready = next((at for at, line in lines if line.strip() == "ready"), None)
        out = []
        for at, line in lines:
            parts = line.split()
            if len(parts) == 3 and parts[0] == "line" and ready is not None and int(parts[2]) >= ready:
                out.append((at - int(parts[2])) / 1e9)
        return out, load


# -- part 3: events/s --------------------------------------------------------------------------------


@dataclass
class Flood:
    submit_rate: list[float] = field(default_factory=list)
    stream_rate: list[float] = field(default_factory=list)
    lost_sub: int = 0
    stored_ok: bool = True
    detail: str = ""


def flood(lane: Lane, n: int, size: int, result: Flood) -> None:
    seen: set[int] = set()
    first = last = 0.0
    with lane.load("events").window():
        t0 = time.perf_counter()
        task_id = lane.submit({"events": n, "size": size, "rate": 0})
        deadline = time.monotonic() + STEP_TIMEOUT * 2
        while True:
            tid, event = lane.sub.recv(max(0.001, deadline - time.monotonic()))
            if tid != task_id:
                continue
            if "i" in event:
                last = time.perf_counter()
                first = first or last
                seen.add(int(event["i"]))
            if is_final(event):
                break
    if event.get("status") != "completed":
        raise RuntimeError(f"{lane.name}: flood job ended {event.get('status')}: {event.get('message')}")
    result.submit_rate.append(n / (last - t0))
    result.stream_rate.append((len(seen) - 1) / (last - first) if last > first else 0.0)
    result.lost_sub += n - len(seen)
    stored = lane.sup.logs(task_id)
    seqs = [e["seq"] for e in stored]
    items = sorted(int(e["i"]) for e in stored if "i" in e)
    if seqs != list(range(1, len(seqs) + 1)) or items != list(range(1, n + 1)):
        result.stored_ok = False
        result.detail = f"{len(seqs)} stored, seq gap-free {seqs == list(range(1, len(seqs) + 1))}, {len(items)}/{n} i"


# -- part 4: event latency ------------------------------------------------------------------------


def latency(lane: Lane, count: int, rate: float) -> list[float]:
    out = []
    with lane.load("latency").window():
        task_id = lane.submit({"events": count, "rate": rate})
        deadline = time.monotonic() + STEP_TIMEOUT
        while True:
            tid, event = lane.sub.recv(max(0.001, deadline - time.monotonic()))
            now = time.time_ns()
            if tid != task_id:
                continue
            if "sent_ns" in event:
                out.append((now - int(event["sent_ns"])) / 1e9)
            if is_final(event):
                break
    return out


# -- the cluster ------------------------------------------------------------------------------------


def job_server_missing() -> str | None:
    """Why Ray's job server cannot start here, or None."""
    try:
        import ray.dashboard.optional_deps  # noqa: F401
    except ImportError as exc:
        return f"Ray's job server (the dashboard) needs ray[default]; {exc.name or exc} is not installed"
    return None


def free_port() -> int:
    from tests.support.service import free_port as _free

    return _free()


# -- report -----------------------------------------------------------------------------------------


def _f(value: float | None, scale: float = 1000.0, fmt: str = "{:.1f}") -> str:
    return "-" if value is None else fmt.format(value * scale)


def _ratio(value: float | None, base: float | None) -> str:
    return "-" if value is None or not base else f"{value / base:.2f}"


def _load(load: Load | None, label: str, disturbed: list[str]) -> str:
    cores = load.cores if load is not None else None
    if cores is not None and cores > DISTURBED:
        disturbed.append(label)
    return "-" if cores is None else f"{cores:.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: few tries of each")
    parser.add_argument("--tries", type=int, help="submit → first event tries per lane (15; --quick 3)")
    parser.add_argument("--cancel-tries", type=int, help="cancels per lane and kind (4; --quick 1)")
    parser.add_argument("--event-tries", type=int, help="floods per lane (3; --quick 1)")
    parser.add_argument("--events", type=int, default=50_000, help="events per flood")
    parser.add_argument("--size", type=int, default=256, help="bytes per flood event")
    parser.add_argument("--latency-events", type=int, help="events (lines) per latency job (200; --quick 50)")
    parser.add_argument("--latency-rate", type=float, default=50.0, help="events (lines) per second")
    parser.add_argument("--grace", type=int, default=1, help="SIGTERM → SIGKILL grace, whole seconds (ours and Ray's)")
    parser.add_argument("--no-direct", action="store_true", help="leave out the RFUAV_RAY_EVENTS=direct lane")
    parser.add_argument("--no-tcp", action="store_true", help="leave out the RFUAV_RAY_EVENTS=tcp (CURVE) lane")
    parser.add_argument("--parts", default="1234", help="which parts to run, e.g. 34 (default: 1234)")
    parser.add_argument("--no-job-server", action="store_true", help="leave out Ray's own job API")
    args = parser.parse_args()
    for name, full, quick in (
        ("tries", 15, 3),
        ("cancel_tries", 4, 1),
        ("event_tries", 3, 1),
        ("latency_events", 200, 50),
    ):
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)

    from ray.cluster_utils import Cluster

    print(f"Ray jobs vs local jobs (ray {_ray_version()}, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f})", flush=True)  # fmt: skip
    missing = "left out (--no-job-server)" if args.no_job_server else job_server_missing()
    work = Path(tempfile.mkdtemp(prefix="rfray", dir="/tmp"))
    lanes: list[Lane] = []
    cluster: Any = None
    session_dir: str | None = None
    disturbed: list[str] = []
    try:
        # Ray's job supervisor reads its grace from its environment: the cluster's processes inherit ours.
        os.environ["RAY_JOB_STOP_WAIT_TIME_S"] = str(args.grace)
        started = time.monotonic()
        head: dict[str, Any] = {"num_cpus": 0, "include_dashboard": missing is None}
        if missing is None:
            head.update(dashboard_host="127.0.0.1", dashboard_port=free_port())
        cluster = Cluster(initialize_head=True, connect=False, head_node_args=head)
        session_dir = cluster.head_node.get_session_dir_path()
        cluster.add_node(num_cpus=2)
        cluster.wait_for_nodes()
        print(f"  cluster {cluster.address} (head 0 CPUs + worker 2 CPUs) up in {time.monotonic() - started:.1f} s",
              flush=True)  # fmt: skip
        jobs: RayJobs | None = None
        if missing is None:
            try:
                jobs = RayJobs(f"http://{cluster.webui_url}", work)
                jobs.client.list_jobs()
                print(f"  Ray job server at http://{cluster.webui_url}", flush=True)
            except Exception as exc:  # noqa: BLE001 - said in the report
                missing = f"the job server did not answer: {type(exc).__name__}: {exc}"
        lanes.append(start_lane("local", {"RFUAV_START_MODE": "warm"}, args.grace))
        ray_env = {"RFUAV_EXECUTOR": "ray", "RFUAV_RAY_ADDRESS": cluster.address}
        lanes.append(start_lane("ray", {**ray_env, "RFUAV_RAY_EVENTS": "relay"}, args.grace))
        if not args.no_direct:
            lanes.append(start_lane("ray-direct", {**ray_env, "RFUAV_RAY_EVENTS": "direct"}, args.grace))
        if not args.no_tcp:
            tcp_env = {**ray_env, "RFUAV_RAY_EVENTS": "tcp", "RFUAV_EVENTS_TCP": "127.0.0.1:0"}
            lanes.append(start_lane("ray-tcp", tcp_env, args.grace))

        # 1 -----------------------------------------------------------------------------------
        if "1" in args.parts:
            print(f"\n1. submit -> first event (the runner's 'running' on events-out), diagnostic events=1, "
                  f"{args.tries} tries per lane, lanes in turn", flush=True)  # fmt: skip
            starts = first_event(lanes, args.tries)
            base = med(starts["local"])
            print(f"  {'lane':<12}{'n':>4}{'median ms':>11}{'p90 ms':>9}{'max ms':>9}{'x local':>9}{'other load':>12}")
            for lane in lanes:
                s = starts[lane.name]
                print(f"  {lane.name:<12}{len(s):>4}{_f(med(s)):>11}{_f(pct(s, 90)):>9}{_f(max(s)):>9}"
                      f"{_ratio(med(s), base):>9}{_load(lane.loads.get('start'), f'1 {lane.name}', disturbed):>12}")  # fmt: skip

        # 2 -----------------------------------------------------------------------------------
        if "2" in args.parts:
            print(f"\n2. cancel -> final status and every process gone (runner + setsid grandchild), grace {args.grace} s, "
                  f"{args.cancel_tries} per row", flush=True)  # fmt: skip
            cancels: dict[tuple[str, str], Cancel] = {}
            for kind in ("cooperative", "uncooperative"):
                for lane in lanes:
                    result = cancels.setdefault((lane.name, kind), Cancel())
                    for _ in range(args.cancel_tries):
                        cancel_ours(lane, kind == "uncooperative", result)
                if jobs is not None:
                    result = cancels.setdefault(("ray job API", kind), Cancel())
                    try:
                        for _ in range(args.cancel_tries):
                            jobs.cancel(kind, result)
                    except Exception as exc:  # noqa: BLE001 - said in the report
                        NOTES.append(f"Ray job API cancel ({kind}): {type(exc).__name__}: {exc}")
            if jobs is not None:
                result = cancels.setdefault(("ray job API", "daemonised gc"), Cancel())
                try:
                    for _ in range(args.cancel_tries):
                        jobs.cancel("daemonised", result)
                except Exception as exc:  # noqa: BLE001 - said in the report
                    NOTES.append(f"Ray job API cancel (daemonised): {type(exc).__name__}: {exc}")
            print(f"  {'path':<13}{'kind':<15}{'n':>3}{'final ms':>10}{'x local':>9}{'runner ms':>11}{'gone ms':>9}{'left@final':>12}"
                  f"{'left@+2s':>10}{'status':>11}{'other load':>12}")  # fmt: skip
            for (path, kind), c in cancels.items():
                base_c = med(cancels[("local", kind)].final) if ("local", kind) in cancels else None
                if path == "ray job API":
                    loads = jobs.load.get("daemonised" if kind.startswith("daemonised") else kind) if jobs else None
                else:
                    loads = next(lane for lane in lanes if lane.name == path).loads.get("cancel")
                print(f"  {path:<13}{kind:<15}{c.tries:>3}{_f(med(c.final)):>10}{_ratio(med(c.final), base_c):>9}"
                      f"{_f(med(c.runner)):>11}{_f(med(c.gone)):>9}{c.left_final:>12}{c.left_after:>10}"
                      f"{'/'.join(sorted(c.statuses)):>11}{_load(loads, f'2 {path} {kind}', disturbed):>12}")  # fmt: skip
            for line in (
                "final: the final status seen (ours: the final event on events-out; Ray: STOPPED from get_job_status,",
                "polled every 10 ms); runner: the runner (Ray: the entrypoint) exited; gone: it and its grandchild exited",
                "(pidfds; medians, ms from the cancel request); left@final: processes (runner, grandchild; Ray: and its",
                "sh -c) not yet exited when the final status was seen; left@+2s: still alive 2 s later (then killed)",
            ):
                print(f"  {line}")
            if jobs is None:
                print(f"  ray job API: not measured: {missing}")
            else:
                calls = [x for (p, _), c in cancels.items() if p == "ray job API" for x in c.call]
                print(
                    f"  Ray's stop_job call itself returned in {_f(med(calls))} ms (median); 'daemonised gc': the "
                    "grandchild double-forked out of the entrypoint's process tree (the diagnostic job has no such mode)"
                )

        # 3 -----------------------------------------------------------------------------------
        if "3" in args.parts:
            print(f"\n3. events/s: diagnostic events={args.events} size={args.size} rate=0, {args.event_tries} per lane",
                  flush=True)  # fmt: skip
            floods = {lane.name: Flood() for lane in lanes}
            for _ in range(args.event_tries):
                for lane in lanes:
                    flood(lane, args.events, args.size, floods[lane.name])
            base_f = med(floods["local"].submit_rate)
            base_s = med(floods["local"].stream_rate)
            print(f"  {'lane':<12}{'n':>3}{'submit->last/s':>16}{'x local':>9}{'first->last/s':>15}{'x local':>9}"
                  f"{'lost (SUB)':>12}{'stored':>10}{'other load':>12}")  # fmt: skip
            for lane in lanes:
                f = floods[lane.name]
                stored = "all" if f.stored_ok else "GAPS"
                print(f"  {lane.name:<12}{len(f.submit_rate):>3}{_f(med(f.submit_rate), 1, '{:,.0f}'):>16}"
                      f"{_ratio(med(f.submit_rate), base_f):>9}{_f(med(f.stream_rate), 1, '{:,.0f}'):>15}"
                      f"{_ratio(med(f.stream_rate), base_s):>9}{f.lost_sub:>12}{stored:>10}"
                      f"{_load(lane.loads.get('events'), f'3 {lane.name}', disturbed):>12}")  # fmt: skip
                if not f.stored_ok:
                    print(f"    {lane.name}: stored events: {f.detail}")
            print("  ('stored': every seq from 1 and every event i from 1 to N read back with the logs command)")

        # 4 -----------------------------------------------------------------------------------
        if "4" in args.parts:
            n, rate = args.latency_events, args.latency_rate
            print(f"\n4. event latency: {n} events at {rate:g}/s, send -> arrival (ours: on events-out; Ray: through "
                  f"tail_job_logs)", flush=True)  # fmt: skip
            lats = {lane.name: latency(lane, n, rate) for lane in lanes}
            tail_load: Load | None = None
            if jobs is not None:
                try:
                    lats["ray tail_job_logs"], tail_load = jobs.tail(n, rate)
                except Exception as exc:  # noqa: BLE001 - said in the report
                    NOTES.append(f"Ray tail_job_logs: {type(exc).__name__}: {exc}")
            base_l = med(lats["ray"])
            print(f"  {'path':<19}{'n':>4}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}{'x ray':>8}"
                  f"{'other load':>12}")  # fmt: skip
            for name, lat in lats.items():
                load = (
                    tail_load
                    if name == "ray tail_job_logs"
                    else next(x for x in lanes if x.name == name).loads.get("latency")
                )
                if not lat:
                    print(f"  {name:<19}   0  (nothing received)")
                    continue
                print(f"  {name:<19}{len(lat):>4}{_f(med(lat), fmt='{:.2f}'):>9}{_f(pct(lat, 90), fmt='{:.2f}'):>9}"
                      f"{_f(pct(lat, 99), fmt='{:.2f}'):>9}{_f(max(lat), fmt='{:.2f}'):>9}{_ratio(med(lat), base_l):>8}"
                      f"{_load(load, f'4 {name}', disturbed):>12}")  # fmt: skip
            if jobs is None:
                print(f"  ray tail_job_logs: not measured: {missing}")
            else:
                print(
                    "  (x ray: p50 against ours on Ray with relayed events; Ray's job log tail reads the log file, "
                    "waiting 1 s at each end of file)"
                )
    finally:
        cleanup(lanes, cluster, session_dir, work)
    if disturbed:
        print(f"\nwarning: other load above {DISTURBED} cores during: {', '.join(disturbed)} (figures suspect)")
    if NOTES:
        print("\nnotes:")
        for note in NOTES:
            print(f"  - {note}")
    return 0


def _ray_version() -> str:
    import ray

    return str(ray.__version__)


def cleanup(lanes: list[Lane], cluster: Any, session_dir: str | None, work: Path) -> None:
    """Stop every supervisor and the cluster, then make sure no process of this run is left."""
    _our_cpu()  # one more look at the tree
    for lane in lanes:
        try:
            code = lane.sup.stop()
            if code not in (0, None):
                NOTES.append(f"supervisor {lane.name} exited with {code}")
        except Exception as exc:  # noqa: BLE001 - said in the report
            NOTES.append(f"supervisor {lane.name}: {type(exc).__name__}: {exc}")
        finally:
            with suppress(Exception):
                lane.sup.close()
    if cluster is not None:
        try:
            cluster.shutdown()
        except Exception as exc:  # noqa: BLE001 - said in the report
            NOTES.append(f"cluster shutdown: {type(exc).__name__}: {exc}")
    os.environ.pop("RAY_JOB_STOP_WAIT_TIME_S", None)
    me = os.getpid()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        left = [pid for pid, born in SEEN.items() if pid != me and alive(pid, born)]
        if not left:
            break
        time.sleep(0.2)
    strays = 0
    for pid, born in SEEN.items():
        if pid != me and alive(pid, born):
            strays += 1
            kill_survivor(pid, born, "stray after the cleanup")
    if session_dir:
        shutil.rmtree(session_dir, ignore_errors=True)
        latest = Path(session_dir).parent / "session_latest"
        with suppress(OSError):
            if os.readlink(latest) == session_dir:
                latest.unlink()  # it named this run's session, gone now
    shutil.rmtree(work, ignore_errors=True)
    what = f"{strays} left, killed (named in the notes)" if strays else "none left"
    print(f"\ncleanup: {len(lanes)} supervisors stopped, cluster shut down; {len(SEEN)} processes of this run "
          f"checked: {what}")  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
