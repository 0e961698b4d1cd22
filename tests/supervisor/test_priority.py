"""The daemon ahead of its jobs: a job started by the real supervisor runs nicer than the
daemon (``RFUAV_JOB_NICE``) in a CPU cgroup of lower weight (``RFUAV_JOB_CPU_WEIGHT``), so the
supervisor and web stay fast while jobs saturate the CPU. Real processes; timings are never
asserted (``benchmarks.events`` measures them)."""

from __future__ import annotations

import os
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
