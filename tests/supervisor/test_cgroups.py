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
from tests.support.processes import remove_dir, short_dir, wait_gone


def _why_not_usable() -> str | None:
    cg = Cgroups("probe")
    cg.prepare()
    return cg.unavailable or None


needs_cgroups = pytest.mark.skipif(_why_not_usable() is not None, reason=f"cgroups not usable here: {_why_not_usable()}")


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
    proc_cgroup = (
        "9:name=systemd:/\n8:pids:/ns/job\n6:freezer:/\n4:memory:/process_api/abc\n"
        "2:cpu,cpuacct:/\n0::/\n"
    )
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
