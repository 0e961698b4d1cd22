"""Where job cgroups go: the hierarchies this process sees, the layout, creating a job's cgroups.

Every job cgroup is created **below the supervisor's own cgroup** in each hierarchy, as
``/proc/self/cgroup`` names it (never elsewhere: that is what systemd's ``Delegate=yes`` hands
over), and is named ``rfuav-<instance>-<task_id>`` where ``instance`` identifies this service
instance (its home directory). A restarted supervisor therefore finds the leftovers of its own
jobs, and only those; it never touches a cgroup it did not create.

Two layouts are supported:

- **cgroup v2 with controllers** (production under systemd): the supervisor's cgroup must stay
  a leaf once controllers are enabled for its children (the "no internal processes" rule), so
  the supervisor moves itself into ``<own>/supervisor``, enables ``+memory +cpu +pids`` in
  ``<own>/cgroup.subtree_control`` and creates jobs in ``<own>/jobs/rfuav-<instance>-<task>``.
- **v1 / hybrid** (the development machines): limits in the v1 ``memory``, ``cpu`` and
  ``pids`` hierarchies; membership in the v2 ("unified") hierarchy too when it is mounted,
  because its ``cgroup.kill`` kills every process of a cgroup atomically.

Fail closed: where the supervisor manages cgroups, a job whose cgroup cannot be created or
limited does not start (``CgroupError``). Only on a host that offers no usable cgroup at all do
jobs run without limits, said at startup and in every such task.

One job's cgroups once made (limits read back, OOM count, the whole-job kill, removal) are a
``supervisor.job_cgroup.JobCgroup``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from supervisor.job_cgroup import DEFAULT_CPU_WEIGHT, UNIFIED, JobCgroup, JobLimits, write_file

__all__ = ["UNIFIED", "CgroupError", "Cgroups", "Hierarchy", "JobCgroup", "JobLimits", "discover", "instance_key"]

log = logging.getLogger(__name__)

#: Job cgroup names start with this (then the instance key, then the task id).
PREFIX = "rfuav-"
#: The v1 hierarchies that carry a job's limits.
V1_CONTROLLERS: tuple[str, ...] = ("memory", "cpu", "pids")
#: v1 ``cpu.cfs_period_us`` used with a quota (the kernel default).
CFS_PERIOD_US = 100_000


#: The controller behind each kind of limit ``_write_limits`` writes.
_CONTROLLER = {"weight": "cpu", "memory": "memory", "cpu": "cpu", "pids": "pids"}


class CgroupError(OSError):
    """A job's cgroup or one of its limits could not be made: the job must not start."""


def instance_key(home: Path | str) -> str:
    """A short stable key for one service instance (its resolved home directory)."""
    return hashlib.sha1(str(Path(home).resolve()).encode()).hexdigest()[:8]


@dataclass(frozen=True)
class Hierarchy:
    """One mounted hierarchy as this process sees it."""

    name: str  # "memory", "cpu", "pids" (v1) or "unified" (v2)
    version: int
    own: Path  # the directory of this process's own cgroup
    controllers: frozenset[str]


def _mounts(mountinfo: str) -> list[tuple[str, str, str, set[str]]]:
    """``(fstype, root, mount point, options)`` of each cgroup mount in ``mountinfo`` text."""
    found = []
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        parts, rparts = left.split(), right.split()
        if len(parts) < 5 or len(rparts) < 3 or rparts[0] not in ("cgroup", "cgroup2"):
            continue
        options = set(rparts[2].split(",")) | set(parts[5].split(",") if len(parts) > 5 else ())
        found.append((rparts[0], parts[3], parts[4], options))
    return found


def discover(proc_cgroup: str | None = None, mountinfo: str | None = None) -> dict[str, Hierarchy]:
    """The hierarchies that matter to jobs, keyed by name, with this process's own cgroup dir.

    Reads ``/proc/self/cgroup`` and ``/proc/self/mountinfo`` (or the given texts). A hierarchy
    whose mount does not contain our cgroup (another namespace) is left out.
    """
    if proc_cgroup is None:
        proc_cgroup = Path("/proc/self/cgroup").read_text()
    if mountinfo is None:
        mountinfo = Path("/proc/self/mountinfo").read_text()
    mounts = _mounts(mountinfo)
    found: dict[str, Hierarchy] = {}
    for line in proc_cgroup.splitlines():
        hid, _, rest = line.partition(":")
        ctrls, _, path = rest.partition(":")
        if not hid:
            continue
        if hid == "0" and ctrls == "":
            candidates = [(root, mp) for fs, root, mp, _ in mounts if fs == "cgroup2"]
            name, version = UNIFIED, 2
        else:
            names = set(ctrls.split(","))
            wanted = names & set(V1_CONTROLLERS)
            if not wanted:
                continue
            candidates = [(root, mp) for fs, root, mp, opts in mounts if fs == "cgroup" and wanted <= opts]
            name, version = min(wanted), 1
        for root, mount_point in candidates:
            # The mount shows the hierarchy from ``root`` down; our path must lie below it.
            rel = os.path.relpath(path, root)
            if rel.startswith(".."):
                continue
            own = Path(os.path.normpath(Path(mount_point) / rel))
            if not own.is_dir():
                continue
            if version == 2:
                controllers = _read_words(own / "cgroup.controllers")
            else:
                controllers = frozenset(set(ctrls.split(",")) & set(V1_CONTROLLERS))
            for ctrl in sorted(controllers) if version == 1 else [name]:
                found.setdefault(ctrl, Hierarchy(ctrl, version, own, controllers))
            break
    return found


def _read_words(path: Path) -> frozenset[str]:
    try:
        return frozenset(path.read_text().split())
    except OSError:
        return frozenset()


class Cgroups:
    """This supervisor's view of the cgroup hierarchies and the job cgroups it creates."""

    def __init__(self, instance: str, hierarchies: dict[str, Hierarchy] | None = None) -> None:
        self.instance = instance
        self.hierarchies = discover() if hierarchies is None else hierarchies
        self._prepared = False
        #: Where job cgroups go, per hierarchy name; filled by ``prepare``.
        self.parents: dict[str, Path] = {}
        #: The v2 layout with controllers is in use (limits in ``unified``).
        self.unified_v2 = False
        #: Why limits cannot be enforced at all ("" when they can).
        self.unavailable = ""
        #: Controllers (of memory, cpu, pids) this host does not offer us: limits of theirs are
        #: not enforced (said at startup and in every task), never a reason to refuse a job.
        self.missing: set[str] = set()
        #: v2: the weight of the jobs' parent cgroup beside the supervisor's (see ``JobLimits``).
        self.jobs_cpu_weight = DEFAULT_CPU_WEIGHT
        #: v2: whether ``prepare`` may move our cgroup's processes into a leaf (they are ours).
        self._move = True

    # -- setup -------------------------------------------------------------------------
    def prepare(self) -> None:
        """Decide the layout once. v2 with controllers: make our cgroup's children able to
        carry limits (move ourselves into ``<own>/supervisor``, enable the controllers)."""
        if self._prepared:
            return
        self._prepared = True
        unified = self.hierarchies.get(UNIFIED)
        wanted = {"memory", "cpu", "pids"}
        if unified and wanted & unified.controllers:
            try:
                self._prepare_v2(unified.own, wanted & unified.controllers)
                self.missing = wanted - unified.controllers
                return
            except OSError as exc:
                log.warning("cgroup v2 delegation of %s failed (%s); trying v1", unified.own, exc)
        for name in V1_CONTROLLERS:
            h = self.hierarchies.get(name)
            if h and os.access(h.own, os.W_OK):
                self.parents[name] = h.own
        if unified and os.access(unified.own, os.W_OK):
            self.parents[UNIFIED] = unified.own
        self.missing = {name for name in V1_CONTROLLERS if name not in self.parents}
        if not any(name in self.parents for name in V1_CONTROLLERS):
            self.unavailable = "no writable memory/cpu/pids cgroup below this process's own"
            if not self.hierarchies:
                self.unavailable = "no cgroup hierarchy mounted"

    def prepare_without_moving(self) -> None:
        """``prepare`` for a process that shares its cgroup with others it does not own (a Ray
        worker): v2 is used only where its controllers are already enabled for our children;
        it never moves a process."""
        self._move = False
        self.prepare()

    def _prepare_v2(self, own: Path, controllers: set[str]) -> None:
        enabled = _read_words(own / "cgroup.subtree_control")
        if not controllers <= enabled and not self._move:
            raise CgroupError(f"{own}: controllers not delegated to our children, and its processes are not ours")
        if not controllers <= enabled:
            leaf = own / "supervisor"
            leaf.mkdir(exist_ok=True)
            # Every process of our cgroup must leave it before controllers can be enabled for
            # its children; those are ours (the daemon and its helpers, e.g. the fork server).
            for pid in (own / "cgroup.procs").read_text().split():
                try:
                    write_file(leaf / "cgroup.procs", pid)
                except ProcessLookupError:
                    pass
            write_file(own / "cgroup.subtree_control", " ".join(f"+{c}" for c in sorted(controllers)))
        jobs = own / "jobs"
        jobs.mkdir(exist_ok=True)
        missing = controllers - _read_words(jobs / "cgroup.subtree_control")
        if missing:
            write_file(jobs / "cgroup.subtree_control", " ".join(f"+{c}" for c in sorted(missing)))
        self.parents[UNIFIED] = jobs
        self.unified_v2 = True
        # Siblings share CPU by weight: the jobs' parent beside our own leaf. Each job's weight
        # (``JobLimits.cpu_weight``) only orders jobs among themselves under it.
        if self.jobs_cpu_weight != DEFAULT_CPU_WEIGHT and (jobs / "cpu.weight").exists():
            write_file(jobs / "cpu.weight", str(self.jobs_cpu_weight))

    # -- jobs --------------------------------------------------------------------------
    def job_name(self, task_id: str) -> str:
        return f"{PREFIX}{self.instance}-{task_id}"

    def create(self, task_id: str, limits: JobLimits) -> JobCgroup:
        """Create (or reuse) the job's cgroups and write its limits. Where this host offers no
        usable cgroup at all (``unavailable``) the result says the limits are not enforced and
        why; otherwise any cgroup or limit that cannot be made raises ``CgroupError`` (fail
        closed: the job does not start)."""
        self.prepare()
        name = self.job_name(task_id)
        dirs: dict[str, str] = {}
        problems: list[str] = []
        if self.unavailable:
            problems.append(self.unavailable)
        for hier, parent in self.parents.items():
            d = parent / name
            try:
                d.mkdir(exist_ok=True)
            except OSError as exc:
                problems.append(f"{hier}: cannot create {d}: {exc.strerror}")
                continue
            dirs[hier] = str(d)
        cg = JobCgroup(dirs, limits, unified_v2=self.unified_v2)
        if not self.unavailable:
            failed, unoffered = self._write_limits(cg, limits)
            problems += failed
            if problems:
                # Fail closed: where we manage cgroups, a job never runs without its limits.
                cg.remove()
                raise CgroupError("cgroup limits could not be applied: " + "; ".join(problems))
            problems = unoffered  # the host's own gap, said at startup and in every task
        if problems:
            cg.enforced = False
            cg.warning = "cgroup limits not enforced: " + "; ".join(problems)
            log.warning("task %s: %s", task_id, cg.warning)
        return cg

    def _write_limits(self, cg: JobCgroup, limits: JobLimits) -> tuple[list[str], list[str]]:
        """Write each requested limit; return what could not be written, and the requested
        limits whose controller this host does not offer us (``missing``)."""
        writes: list[tuple[str, str, str, str]] = []  # (what, hierarchy, file, value)
        if self.unified_v2:
            mem = str(limits.memory_mb << 20) if limits.memory_mb > 0 else "max"
            cpu = f"{int(limits.cpus * CFS_PERIOD_US)} {CFS_PERIOD_US}" if limits.cpus > 0 else "max"
            pids = str(limits.pids) if limits.pids > 0 else "max"
            writes += [
                ("weight", UNIFIED, "cpu.weight", str(limits.cpu_weight)),
                ("memory", UNIFIED, "memory.max", mem),
                ("memory", UNIFIED, "memory.swap.max", "0" if limits.memory_mb > 0 else "max"),
                ("cpu", UNIFIED, "cpu.max", cpu),
                ("pids", UNIFIED, "pids.max", pids),
            ]
        else:
            mem = str(limits.memory_mb << 20) if limits.memory_mb > 0 else "-1"
            writes += [
                # memory+swap may never be below memory: lift it first, set it last.
                ("memory", "memory", "memory.memsw.limit_in_bytes", "-1"),
                ("memory", "memory", "memory.limit_in_bytes", mem),
                ("weight", "cpu", "cpu.shares", str(max(2, limits.cpu_weight * 1024 // DEFAULT_CPU_WEIGHT))),
                ("cpu", "cpu", "cpu.cfs_period_us", str(CFS_PERIOD_US)),
                ("cpu", "cpu", "cpu.cfs_quota_us", str(int(limits.cpus * CFS_PERIOD_US)) if limits.cpus > 0 else "-1"),
                ("pids", "pids", "pids.max", str(limits.pids) if limits.pids > 0 else "max"),
            ]
            if limits.memory_mb > 0:
                # Without swap accounting the job could swap past its limit instead of being
                # OOM-killed; the file is absent when the kernel does not account swap.
                writes.append(("memory", "memory", "memory.memsw.limit_in_bytes", mem))
        requested = {
            "weight": limits.cpu_weight != DEFAULT_CPU_WEIGHT,
            "memory": limits.memory_mb > 0,
            "cpu": limits.cpus > 0,
            "pids": limits.pids > 0,
        }
        problems: list[str] = []
        unoffered: list[str] = []
        for what, hier, fname, value in writes:
            controller = _CONTROLLER[what]
            if controller in self.missing:
                if requested[what] and not any(u.startswith(f"{what}:") for u in unoffered):
                    unoffered.append(f"{what}: this host offers no {controller} controller")
                continue
            d = cg.dirs.get(hier)
            if d is None:
                if requested[what] and f"{what}:" not in " ".join(problems):
                    problems.append(f"{what}: no {hier} cgroup")
                continue
            path = Path(d) / fname
            if fname.startswith(("memory.swap", "memory.memsw")) and not path.exists():
                continue
            try:
                write_file(path, value)
            except OSError as exc:
                if requested[what]:
                    problems.append(f"{what}: cannot write {path}: {exc.strerror}")
        return problems, unoffered

    def attach(self, dirs: dict[str, str], limits: JobLimits | None = None) -> JobCgroup | None:
        """A ``JobCgroup`` for directories recorded earlier (adoption after a restart), or None
        when any of them is not one of this instance's job cgroups below our own."""
        self.prepare()
        allowed = {str(p) for p in self.parents.values()}
        for d in dirs.values():
            path = Path(d)
            if str(path.parent) not in allowed or not path.name.startswith(f"{PREFIX}{self.instance}-"):
                log.warning("refusing cgroup %s: not one of this instance's job cgroups", d)
                return None
        existing = {h: d for h, d in dirs.items() if Path(d).is_dir()}
        return JobCgroup(existing, limits or JobLimits(0, 0.0, 0), unified_v2=self.unified_v2)

    def leftovers(self) -> dict[str, dict[str, str]]:
        """This instance's job cgroups that exist now: task id -> {hierarchy: dir}."""
        self.prepare()
        head = f"{PREFIX}{self.instance}-"
        found: dict[str, dict[str, str]] = {}
        for hier, parent in self.parents.items():
            try:
                entries = list(parent.iterdir())
            except OSError:
                continue
            for entry in entries:
                if entry.name.startswith(head) and entry.is_dir():
                    found.setdefault(entry.name[len(head) :], {})[hier] = str(entry)
        return found
