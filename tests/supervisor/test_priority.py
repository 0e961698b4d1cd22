"""The daemon ahead of its jobs: a job started by the real supervisor runs nicer than the
daemon (``RFUAV_JOB_NICE``) in a CPU cgroup of lower weight (``RFUAV_JOB_CPU_WEIGHT``), so the
supervisor and web stay fast while jobs saturate the CPU. Real processes; timings are never
asserted (``benchmarks.events`` measures them)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import psutil
import pytest

from tests.support.cgroups import assert_cpu_weight
from tests.support.supervisor import SupervisorProcess


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("env", "increment", "weight"),
    [({}, 10, 20), ({"RFUAV_JOB_NICE": "0", "RFUAV_JOB_CPU_WEIGHT": "50"}, 0, 50)],
    ids=["defaults", "nice-off"],
)
def test_a_cpu_bound_job_runs_below_the_daemon(
    make_supervisor: Callable[..., SupervisorProcess], env: dict[str, str], increment: int, weight: int
) -> None:
    sup = make_supervisor(**env)
    sub = sup.subscribe()
    task_id = sup.submit(params={"report": True, "spin": 120})
    report: dict[str, object] = {}
    while True:  # the report first, then the spinning starts
        tid, event = sub.recv(timeout=60)
        if tid != task_id:
            continue
        report = event.get("process", report)
        if event.get("spinning"):
            break
    pid = report["pid"]
    assert isinstance(pid, int)
    wanted = min(19, psutil.Process(sup.pid).nice() + increment)
    threads = os.listdir(f"/proc/{pid}/task")
    assert {os.getpriority(os.PRIO_PROCESS, int(t)) for t in threads} == {wanted}
    assert report["nice"] == wanted
    assert_cpu_weight(pid, weight)
    sup.call("cancel", task_id=task_id)
    assert sup.wait_final(task_id, timeout=60)["status"] == "cancelled"


@pytest.mark.timeout(120)
def test_wal_checkpoints_run_as_much_nicer_as_jobs(supervisor: SupervisorProcess) -> None:
    """Copying the WAL into the database is upkeep: its thread runs ``RFUAV_JOB_NICE`` steps
    nicer than the daemon's loop, which stays at the daemon's own priority."""
    supervisor.wait_final(supervisor.submit(params={"events": 50}))  # something to checkpoint
    deadline = time.monotonic() + 60
    while True:  # checkpoints run a second apart once events were stored
        threads = {comm: nice for comm, nice in _threads(supervisor.pid) if comm == "rfuavd checkpt"}
        if threads or time.monotonic() > deadline:
            break
        supervisor.call("health")  # a round trip: one more turn of the daemon's loop
    main = psutil.Process(supervisor.pid).nice()
    assert threads and set(threads.values()) == {min(19, main + supervisor.settings.job_nice)}, threads
    assert dict(_threads(supervisor.pid))["rfuavd supervis"] == main


def _threads(pid: int) -> list[tuple[str, int]]:
    """``(name, nice)`` of each thread of ``pid`` (``/proc/PID/task/TID/stat``, field 19)."""
    out = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            comm = open(f"/proc/{pid}/task/{tid}/comm").read().strip()
            stat = open(f"/proc/{pid}/task/{tid}/stat").read()
        except OSError:
            continue  # the thread ended
        out.append((comm, int(stat.rsplit(")", 1)[1].split()[16])))
    return out
