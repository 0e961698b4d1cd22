"""The host's cgroups as the kernel shows them, read independently of ``supervisor.cgroups``:
whether this host can enforce job limits at all, and what a running job's cgroups really hold.

- ``why_no_cgroups()``: None when this process may create cgroups with memory and pids limits
  below its own (what a supervisor started from here does for each job); else the reason. The
  probe runs once per test session (a directory made and removed in each v1 hierarchy, or the
  delegated v2 cgroup checked). Tests that check enforcement skip, with this reason, only when
  it is not None; everywhere else they assert it.
- ``cgroup_dirs(pid)``: the directory of each cgroup ``pid`` is in (``memory``, ``cpu``,
  ``pids`` of v1; ``unified`` for v2), from ``/proc/<pid>/cgroup`` and our mountinfo.
- ``assert_job_cgroup(pid, memory_mb=, pids=, cpus=)``: the running job ``pid`` is in a job
  cgroup of its own (``rfuav-…``) below ours, and the kernel files of that cgroup hold exactly
  the limits given (0 = unlimited). Returns the job's cgroup directories.
- ``assert_cpu_weight(pid, weight)``: the running job ``pid``'s CPU cgroup holds that weight
  (False where the host offers no CPU controller: nothing to check).
- ``assert_confined(pid, settings)``: the same with a supervisor's job limits, on a host that
  has cgroups (nothing to check, and {} returned, on one that has none).
- ``assert_every_task_was_confined(sup)``: every task a test daemon started is stored as run
  with enforced limits in job cgroups named for it (the supervisor fixtures call it after
  each test).
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

#: The controllers that carry a job's limits.
LIMIT_CONTROLLERS: tuple[str, ...] = ("memory", "cpu", "pids")
UNIFIED = "unified"


def _mounts() -> list[tuple[str, str, Path, set[str]]]:
    """``(fstype, root, mount point, super options)`` of each cgroup mount of this process."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(rfields) >= 3 and rfields[0] in ("cgroup", "cgroup2"):
            out.append((rfields[0], fields[3], Path(fields[4]), set(rfields[2].split(","))))
    return out


def cgroup_dirs(pid: int | str = "self") -> dict[str, Path]:
    """Where ``pid``'s cgroups are on disk: ``{"memory"|"cpu"|"pids"|"unified": directory}``
    (only hierarchies mounted here and containing that cgroup)."""
    mounts = _mounts()
    out: dict[str, Path] = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        hid, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hid == "0" and controllers == "":
            names, fstype = [UNIFIED], "cgroup2"
        else:
            names, fstype = [c for c in controllers.split(",") if c in LIMIT_CONTROLLERS], "cgroup"
        for name in names:
            for fs, root, point, options in mounts:
                if fs != fstype or (fstype == "cgroup" and name not in options):
                    continue
                rel = os.path.relpath(path, root)
                if not rel.startswith(".."):
                    out[name] = Path(os.path.normpath(point / rel))
                    break
    return out


def _v2_controllers(directory: Path) -> set[str]:
    try:
        return set((directory / "cgroup.controllers").read_text().split())
    except OSError:
        return set()


@functools.cache
def why_no_cgroups() -> str | None:
    """None when job cgroups with memory and pids limits can be made below our own cgroup."""
    own = cgroup_dirs()
    unified = own.get(UNIFIED)
    if unified is not None and {"memory", "pids"} <= _v2_controllers(unified):
        return None if os.access(unified, os.W_OK) else f"the delegated cgroup v2 {unified} is not writable"
    problems = []
    if unified is not None and not {"memory", "pids"} <= own.keys():
        offered = " ".join(sorted(_v2_controllers(unified))) or "none"
        problems.append(f"our cgroup v2 {unified} offers the controllers {offered}, not both memory and pids")
    for name, limit_file in (("memory", "memory.limit_in_bytes"), ("pids", "pids.max")):
        parent = own.get(name)
        if parent is None:
            problems.append(f"no {name} cgroup hierarchy mounted")
            continue
        probe = parent / f"rfuav-probe-{os.getpid()}"
        try:
            probe.mkdir()
        except OSError as exc:
            problems.append(f"cannot create a {name} cgroup below {parent}: {exc.strerror}")
            continue
        try:
            if not (probe / limit_file).exists():
                problems.append(f"{probe} has no {limit_file}")
        finally:
            probe.rmdir()
    return "; ".join(problems) or None


def _read(path: Path) -> str:
    return path.read_text().strip()


def assert_job_cgroup(pid: int, *, memory_mb: int, pids: int, cpus: float = 0) -> dict[str, Path]:
    """Assert that the live process ``pid`` is in a job cgroup of its own below ours whose
    kernel files hold these limits (0: unlimited); return that job's cgroup directories."""
    own = cgroup_dirs()
    dirs = cgroup_dirs(pid)
    unified = dirs.get(UNIFIED)
    v2 = unified is not None and {"memory", "pids"} <= _v2_controllers(unified)
    wanted = [UNIFIED] if v2 else list(LIMIT_CONTROLLERS)
    for name in wanted:
        assert name in dirs, f"pid {pid} is in no {name} cgroup: {Path(f'/proc/{pid}/cgroup').read_text()}"
        job = dirs[name]
        assert job.name.startswith("rfuav-"), f"pid {pid}'s {name} cgroup {job} is not a job cgroup"
        assert own[name] in job.parents, f"job cgroup {job} is not below ours ({own[name]})"
        members = {int(p) for p in _read(job / "cgroup.procs").split()}
        assert pid in members, f"pid {pid} not in {job}/cgroup.procs ({members})"
    if v2:
        assert unified is not None
        assert _read(unified / "memory.max") == (str(memory_mb << 20) if memory_mb else "max")
        assert _read(unified / "pids.max") == (str(pids) if pids else "max")
        quota = _read(unified / "cpu.max").split()[0]
        assert quota == (str(int(cpus * 100_000)) if cpus else "max")
    else:
        limit = int(_read(dirs["memory"] / "memory.limit_in_bytes"))
        if memory_mb:
            assert limit == memory_mb << 20, f"memory.limit_in_bytes {limit}, wanted {memory_mb} MiB"
        else:
            assert limit >= 1 << 62, f"memory.limit_in_bytes {limit}, wanted unlimited"
        got = _read(dirs["pids"] / "pids.max")
        assert got == (str(pids) if pids else "max"), f"pids.max {got}, wanted {pids or 'max'}"
        quota = int(_read(dirs["cpu"] / "cpu.cfs_quota_us"))
        period = int(_read(dirs["cpu"] / "cpu.cfs_period_us"))
        assert quota == (int(cpus * period) if cpus else -1), f"cpu.cfs_quota_us {quota} (period {period})"
    return {name: dirs[name] for name in dirs if dirs[name].name.startswith("rfuav-")}


def assert_cpu_weight(pid: int, weight: int) -> bool:
    """Assert that the live job ``pid``'s CPU cgroup (its own, ``rfuav-…``) holds ``weight``
    (v2 ``cpu.weight``; v1 ``cpu.shares``, the weight scaled from 100 to 1024). Returns False,
    asserting nothing, where this host has no job cgroups or no CPU controller."""
    if why_no_cgroups() is not None:
        return False
    dirs = cgroup_dirs(pid)
    unified = dirs.get(UNIFIED)
    if unified is not None and "cpu" in _v2_controllers(unified):
        cpu, name, value = unified, "cpu.weight", str(weight)
    elif "cpu" in dirs:
        cpu, name, value = dirs["cpu"], "cpu.shares", str(max(2, weight * 1024 // 100))
    else:
        return False
    assert cpu.name.startswith("rfuav-"), f"pid {pid}'s cpu cgroup {cpu} is not a job cgroup"
    assert pid in {int(p) for p in _read(cpu / "cgroup.procs").split()}, f"pid {pid} not in {cpu}"
    got = _read(cpu / name)
    assert got == value, f"{cpu / name} holds {got}, wanted {value} (weight {weight})"
    return True


def assert_confined(pid: int, settings: Any) -> dict[str, Path]:
    """``assert_job_cgroup`` with the job limits of a supervisor's ``settings``
    (``protocol.settings.Settings``) where this host has cgroups; returns the job's cgroup
    directories ({} on a host without cgroups, where there is nothing to check)."""
    if why_no_cgroups() is not None:
        return {}
    return assert_job_cgroup(pid, memory_mb=settings.job_memory_mb, pids=settings.job_pids, cpus=settings.job_cpus)


def _confined(task: dict[str, Any]) -> bool:
    """The stored task ran with enforced limits in job cgroups named for it: v1 memory, cpu and
    pids (plus v2 for the kill on a hybrid host), or one v2 cgroup with controllers."""
    dirs = json.loads(task["cgroup"] or "{}")
    hierarchies = set(dirs)
    named = all(d.rsplit("/", 1)[-1].startswith("rfuav-") and d.endswith("-" + task["task_id"]) for d in dirs.values())
    return (
        bool(task["limits_enforced"])
        and named
        and ({"memory", "cpu", "pids"} <= hierarchies or hierarchies == {"unified"})
    )


def assert_every_task_was_confined(sup: Any) -> None:
    """Every task the daemon ``sup`` (``tests.support.supervisor.SupervisorProcess``) started
    (it got a pid) ran confined (see ``_confined``); only on a host without usable cgroups is
    nothing asserted."""
    if why_no_cgroups() is not None:
        return
    started = [t for t in sup.stored_tasks() if t["pid"] is not None]
    loose = [(t["task_id"], t["job"], t["limits_enforced"], t["cgroup"]) for t in started if not _confined(t)]
    assert not loose, f"tasks that ran without enforced cgroup limits on a host that has cgroups: {loose}"
