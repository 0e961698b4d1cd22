"""Job cgroups: discovery from /proc/self/cgroup and mountinfo, real creation with limits below
our own cgroup, the whole-cgroup kill, leftovers of this instance only, and removal.

The real-cgroup tests run as root on this host (v1 memory/cpu/pids plus a v2 hierarchy with
``cgroup.kill``) and skip with the reason where cgroups cannot be created.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.cgroups import UNIFIED, Cgroups, Hierarchy, JobLimits, discover
from tests.support.cgroups import why_no_cgroups
from tests.support.processes import remove_dir, short_dir, wait_gone

needs_cgroups = pytest.mark.skipif(
    why_no_cgroups() is not None, reason=f"no job cgroups on this host: {why_no_cgroups()}"
)


def test_the_supervisor_finds_cgroups_usable_where_the_host_has_them() -> None:
    # The probe of tests.support.cgroups is independent of supervisor.cgroups: where it can
    # make limited cgroups below ours, so must the supervisor (else every job would run loose).
    cg = Cgroups("tst0000f")
    cg.prepare()
    if why_no_cgroups() is None:
        assert cg.unavailable == ""
        assert {"memory", "pids"} <= set(cg.parents) or cg.unified_v2


@pytest.fixture()
def tmp() -> Iterator[Path]:
    path = short_dir()
    yield path
    remove_dir(path)


@pytest.fixture()
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A process (in its own session) that a test moves into a job cgroup."""
    proc = subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"], start_new_session=True)
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


# -- discovery ----------------------------------------------------------------------------------
def test_discover_finds_our_cgroup_below_each_mount_root(tmp: Path) -> None:
    # A hybrid host like this one: the memory cgroup is not "/", and the pids mount shows the
    # hierarchy from /ns (a container's view), so our path is found relative to that root.
    (tmp / "memory/process_api/abc").mkdir(parents=True)
    (tmp / "cpu,cpuacct").mkdir()
    (tmp / "pids/job").mkdir(parents=True)
    (tmp / "unified").mkdir()
    (tmp / "freezer").mkdir()
    proc_cgroup = "9:name=systemd:/\n8:pids:/ns/job\n6:freezer:/\n4:memory:/process_api/abc\n2:cpu,cpuacct:/\n0::/\n"
    mountinfo = (
        f"31 23 0:28 / {tmp} rw,relatime - tmpfs tmpfs rw,mode=755\n"
        f"32 31 0:29 / {tmp}/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct\n"
        f"35 31 0:32 / {tmp}/memory rw,relatime - cgroup cgroup rw,memory\n"
        f"37 31 0:34 / {tmp}/freezer rw,relatime - cgroup cgroup rw,freezer\n"
        f"39 31 0:36 /ns {tmp}/pids rw,relatime - cgroup cgroup rw,pids\n"
        f"41 31 0:38 / {tmp}/unified rw,relatime - cgroup2 cgroup2 rw\n"
    )
    found = discover(proc_cgroup, mountinfo)
    assert set(found) == {"memory", "cpu", "pids", UNIFIED}  # freezer is no job limit
    assert found["memory"].own == tmp / "memory/process_api/abc"
    assert found["memory"].version == 1
    assert found["cpu"].own == tmp / "cpu,cpuacct"
    assert found["pids"].own == tmp / "pids/job"
    assert found[UNIFIED].own == tmp / "unified" and found[UNIFIED].version == 2


def test_discover_skips_a_mount_that_does_not_contain_our_cgroup(tmp: Path) -> None:
    (tmp / "memory").mkdir()
    proc_cgroup = "4:memory:/elsewhere/abc\n"
    mountinfo = f"35 31 0:32 /ns {tmp}/memory rw - cgroup cgroup rw,memory\n"
    assert discover(proc_cgroup, mountinfo) == {}


def test_discover_here_matches_proc_self_cgroup() -> None:
    found = discover()
    lines = dict(line.split(":", 2)[1:] for line in Path("/proc/self/cgroup").read_text().splitlines())
    for name, hier in found.items():
        key = "" if name == UNIFIED else next(k for k in lines if name in k.split(","))
        assert str(hier.own).endswith(lines[key].rstrip("/")) or lines[key] == "/"
        assert hier.own.is_dir()


# -- real job cgroups -----------------------------------------------------------------------------
@needs_cgroups
def test_create_writes_limits_below_our_cgroup_and_remove_deletes_them(sleeper: subprocess.Popen[bytes]) -> None:
    cgroups = Cgroups("tst00001")
    job = cgroups.create("job-a", JobLimits(memory_mb=300, cpus=1.5, pids=40))
    try:
        assert job.enforced and job.warning is None
        for name, path in job.dirs.items():
            assert Path(path).parent == cgroups.hierarchies[name].own
            assert Path(path).name == "rfuav-tst00001-job-a"
        for procs in job.procs_files:
            Path(procs).write_text(str(sleeper.pid))
        assert job.pids() == {sleeper.pid}
        back = job.read_back()
        assert back["memory_limit_bytes"] == 300 << 20
        assert back["pids_limit"] == 40
        assert back["cpus"] == 1.5
        assert back["pids_current"] == 1
        assert job.oom_killed() is False
        # Unlimited is written as such, not left at a previous value.
        again = cgroups.create("job-a", JobLimits(0, 0, 0))
        assert again.read_back()["memory_limit_bytes"] is None
        assert again.read_back()["pids_limit"] is None and again.read_back()["cpus"] is None
    finally:
        assert job.remove()  # kills the process still inside, then removes every dir
    assert sleeper.wait(10) == -signal.SIGKILL
    assert not any(Path(p).exists() for p in job.dirs.values())
    assert job.remove()  # idempotent


@needs_cgroups
def test_kill_reaches_processes_that_left_the_session() -> None:
    cgroups = Cgroups("tst00002")
    job = cgroups.create("job-b", JobLimits(0, 0, 0))
    # A parent in the job cgroup starts a child that calls setsid (as a job's grandchild may).
    script = (
        "import signal, subprocess, sys\n"
        "for p in sys.argv[1:]: open(p, 'w').write(str(__import__('os').getpid()))\n"
        "c = subprocess.Popen([sys.executable, '-c', 'import signal; signal.pause()'], start_new_session=True)\n"
        "print(c.pid, flush=True)\n"
        "signal.pause()\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script, *job.procs_files], stdout=subprocess.PIPE)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert os.getsid(child) == child
        assert job.pids() == {parent.pid, child}
        job.kill()
        assert parent.wait(10) == -signal.SIGKILL
        assert wait_gone([child]) == []
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        assert job.remove()


@needs_cgroups
def test_leftovers_and_attach_see_this_instance_only() -> None:
    mine, theirs = Cgroups("tst0000a"), Cgroups("tst0000b")
    a = mine.create("t1", JobLimits(0, 0, 0))
    b = theirs.create("t1", JobLimits(0, 0, 0))
    try:
        assert mine.leftovers() == {"t1": a.dirs}
        assert theirs.leftovers() == {"t1": b.dirs}
        assert mine.attach(b.dirs) is None  # another instance's job cgroup: never touched
        own_parent = next(iter(mine.parents.values()))
        assert mine.attach({"memory": str(own_parent)}) is None  # our own cgroup, not a job's
        attached = mine.attach(a.dirs)
        assert attached is not None and attached.dirs == a.dirs
    finally:
        assert a.remove() and b.remove()
    assert mine.leftovers() == {}


def test_without_any_hierarchy_limits_are_reported_as_not_enforced() -> None:
    job = Cgroups("tst0000c", hierarchies={}).create("t", JobLimits(100, 1, 10))
    assert job.dirs == {} and job.procs_files == []
    assert job.enforced is False
    assert job.warning == "cgroup limits not enforced: no cgroup hierarchy mounted"
    assert job.remove()


def test_an_unwritable_own_cgroup_says_why() -> None:
    # /proc/1 accepts no new directory, not even from root.
    fake = {"memory": Hierarchy("memory", 1, Path("/proc/1"), frozenset({"memory"}))}
    job = Cgroups("tst0000d", hierarchies=fake).create("t", JobLimits(100, 0, 0))
    assert job.enforced is False and job.dirs == {}
    assert job.warning == "cgroup limits not enforced: no writable memory/cpu/pids cgroup below this process's own"


# -- cgroup v2 with controllers (production under systemd), against a fake delegated tree ---------
V2_CONTROLLERS = frozenset({"cpuset", "cpu", "io", "memory", "pids"})


def _delegated(tmp: Path, enabled: str = "") -> Path:
    """A directory laid out like the cgroup systemd's ``Delegate=yes`` hands the supervisor: its
    controllers, its one process (us) and the controllers enabled for its children so far."""
    own = tmp / "system.slice" / "rfuav-supervisor.service"
    own.mkdir(parents=True)
    (own / "cgroup.controllers").write_text(" ".join(sorted(V2_CONTROLLERS)) + "\n")
    (own / "cgroup.subtree_control").write_text(enabled)
    (own / "cgroup.procs").write_text(f"{os.getpid()}\n")
    return own


def _kernel_files(job: Path) -> None:
    """What the kernel puts in a new v2 cgroup whose parent enabled memory, cpu and pids."""
    job.mkdir(parents=True, exist_ok=True)
    files = {
        "cgroup.procs": "", "cgroup.kill": "", "memory.max": "max", "memory.swap.max": "max", "memory.current": "0",
        "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n", "cpu.max": "max 100000", "cpu.weight": "100",
        "pids.max": "max",
        "pids.current": "0",
    }  # fmt: skip
    for name, value in files.items():
        (job / name).write_text(value)


def _v2(own: Path, instance: str) -> Cgroups:
    return Cgroups(instance, hierarchies={UNIFIED: Hierarchy(UNIFIED, 2, own, V2_CONTROLLERS)})


def _text(path: Path) -> str:
    return path.read_text().strip()


def test_v2_delegation_moves_us_to_a_leaf_enables_controllers_and_writes_limits(tmp: Path) -> None:
    own = _delegated(tmp)
    cgroups = _v2(own, "tst00010")
    cgroups.prepare()
    assert cgroups.unified_v2 is True and cgroups.unavailable == ""
    # "No internal processes": we leave our cgroup for a leaf before enabling controllers.
    assert _text(own / "supervisor" / "cgroup.procs") == str(os.getpid())
    assert _text(own / "cgroup.subtree_control") == "+cpu +memory +pids"
    assert _text(own / "jobs" / "cgroup.subtree_control") == "+cpu +memory +pids"
    assert cgroups.parents == {UNIFIED: own / "jobs"}

    job_dir = own / "jobs" / "rfuav-tst00010-t1"
    _kernel_files(job_dir)
    job = cgroups.create("t1", JobLimits(memory_mb=300, cpus=1.5, pids=40))
    assert job.enforced is True and job.warning is None and job.unified_v2 is True
    assert job.dirs == {UNIFIED: str(job_dir)} and job.procs_files == [str(job_dir / "cgroup.procs")]
    assert _text(job_dir / "memory.max") == str(300 << 20)
    assert _text(job_dir / "memory.swap.max") == "0"  # no swapping past the limit
    assert _text(job_dir / "cpu.max") == "150000 100000"
    assert _text(job_dir / "pids.max") == "40"
    assert cgroups.leftovers() == {"t1": {UNIFIED: str(job_dir)}}

    # ps, the reaper and the kill read and write the v2 files.
    (job_dir / "memory.current").write_text("123456\n")
    (job_dir / "pids.current").write_text("3\n")
    assert job.read_back() == {
        "memory_limit_bytes": 300 << 20, "memory_usage_bytes": 123456, "pids_limit": 40, "pids_current": 3, "cpus": 1.5,
    }  # fmt: skip
    assert job.oom_killed() is False
    (job_dir / "memory.events").write_text("low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n")
    assert job.oom_killed() is True
    job.kill()
    assert _text(job_dir / "cgroup.kill") == "1"

    # Unlimited is written as such, not left at the previous values.
    again = cgroups.create("t1", JobLimits(0, 0, 0))
    assert again.enforced is True
    assert [_text(job_dir / f) for f in ("memory.max", "memory.swap.max", "cpu.max", "pids.max")] == ["max"] * 4
    assert again.read_back()["memory_limit_bytes"] is None and again.read_back()["cpus"] is None


def test_v2_with_controllers_already_enabled_moves_nothing(tmp: Path) -> None:
    own = _delegated(tmp, enabled="cpu memory pids\n")  # as the kernel lists them
    cgroups = _v2(own, "tst00011")
    cgroups.prepare()
    assert cgroups.unified_v2 is True
    assert not (own / "supervisor").exists()
    assert _text(own / "cgroup.subtree_control") == "cpu memory pids"  # untouched
    assert _text(own / "jobs" / "cgroup.subtree_control") == "+cpu +memory +pids"


def test_v2_delegation_that_fails_falls_back_and_says_why(tmp: Path) -> None:
    own = _delegated(tmp)
    (own / "cgroup.subtree_control").unlink()
    (own / "cgroup.subtree_control").mkdir()  # writing it fails (EISDIR), as a refused write would
    cgroups = _v2(own, "tst00012")
    cgroups.prepare()
    assert cgroups.unified_v2 is False
    assert cgroups.unavailable == "no writable memory/cpu/pids cgroup below this process's own"
    job = cgroups.create("t1", JobLimits(100, 0, 0))
    assert job.enforced is False and job.warning is not None and cgroups.unavailable in job.warning
