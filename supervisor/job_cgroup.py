"""One job's cgroups: its limits, its processes, its OOM count, the whole-job kill, removal.

``supervisor.cgroups.Cgroups.create`` makes a ``JobCgroup`` (and ``attach`` one recorded
earlier); this module only reads and writes the job's own directories, one per hierarchy
(``memory``, ``cpu``, ``pids`` on v1; ``unified`` on v2, where ``unified_v2`` says whether the
limits live there too or only the membership and ``cgroup.kill``).
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

#: The name under which the v2 hierarchy appears in a job's ``dirs``.
UNIFIED = "unified"
#: cgroup v2's default ``cpu.weight`` (v1: ``cpu.shares`` 1024).
DEFAULT_CPU_WEIGHT = 100
#: How long ``remove`` retries ``rmdir`` while the kernel finishes reaping the job's tasks.
REMOVE_RETRY_SECONDS = 1.0


@dataclass(frozen=True)
class JobLimits:
    """A job's cgroup limits; 0 means "no limit" for each. ``cpu_weight`` is the job's CPU
    share beside the daemons' 100 (cgroup v2 ``cpu.weight``; v1 ``cpu.shares`` scaled to 1024):
    below 100, the supervisor and web keep their answers fast while jobs saturate the CPU."""

    memory_mb: int
    cpus: float
    pids: int
    cpu_weight: int = DEFAULT_CPU_WEIGHT


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().split()[0]
    except (OSError, IndexError):
        return None
    if text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _read_keyed(path: Path, key: str) -> int | None:
    """``key``'s value in a flat-keyed file such as ``memory.oom_control`` or ``memory.events``."""
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        return None
    return None


def write_file(path: Path, value: str) -> None:
    """Write one cgroup file (one ``write``: the kernel takes each write as one value)."""
    with open(path, "w") as fh:
        fh.write(value)


@dataclass
class JobCgroup:
    """The cgroup directories of one job (hierarchy name -> directory) and what they enforce."""

    dirs: dict[str, str]
    limits: JobLimits
    enforced: bool = True
    warning: str | None = None
    unified_v2: bool = False  # the limits live in a v2 cgroup (``dirs["unified"]``)
    _removed: bool = field(default=False, repr=False)

    @property
    def procs_files(self) -> list[str]:
        """The ``cgroup.procs`` files a runner writes its pid into before any work."""
        return [str(Path(d) / "cgroup.procs") for d in self.dirs.values()]

    def pids(self) -> set[int]:
        """Every process currently in any of the job's cgroups."""
        pids: set[int] = set()
        for procs in self.procs_files:
            try:
                pids.update(int(p) for p in Path(procs).read_text().split())
            except (OSError, ValueError):
                continue
        return pids

    def kill(self) -> None:
        """SIGKILL every process of the job: v2 ``cgroup.kill`` where present (atomic, also
        catches processes forking right now), else each pid in ``cgroup.procs`` until empty."""
        unified = self.dirs.get(UNIFIED)
        if unified and (Path(unified) / "cgroup.kill").exists():
            try:
                write_file(Path(unified) / "cgroup.kill", "1")
                return
            except OSError as exc:
                log.warning("cgroup.kill in %s failed (%s); killing pid by pid", unified, exc)
        for _ in range(50):  # a fork bomb could race the loop; the pids limit bounds it
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def oom_killed(self) -> bool:
        """Whether the kernel's OOM killer killed a process of this job (its memory cgroup's
        counter: v2 ``memory.events`` ``oom_kill``, v1 ``memory.oom_control`` ``oom_kill``)."""
        if self.unified_v2 and UNIFIED in self.dirs:
            count = _read_keyed(Path(self.dirs[UNIFIED]) / "memory.events", "oom_kill")
            return bool(count)
        memory = self.dirs.get("memory")
        if not memory:
            return False
        count = _read_keyed(Path(memory) / "memory.oom_control", "oom_kill")
        if count is None:  # an old kernel without the counter: a hit limit is the best sign
            count = _read_int(Path(memory) / "memory.failcnt")
        return bool(count)

    def read_back(self) -> dict[str, int | float | None]:
        """The limits and usage as the kernel reports them (for ``ps``); None = no limit."""
        out: dict[str, int | float | None] = {}
        if self.unified_v2 and UNIFIED in self.dirs:
            d = Path(self.dirs[UNIFIED])
            out["memory_limit_bytes"] = _read_int(d / "memory.max")
            out["memory_usage_bytes"] = _read_int(d / "memory.current")
            out["pids_limit"] = _read_int(d / "pids.max")
            out["pids_current"] = _read_int(d / "pids.current")
            try:
                quota, period = (d / "cpu.max").read_text().split()
                out["cpus"] = None if quota == "max" else int(quota) / int(period)
            except (OSError, ValueError):
                out["cpus"] = None
            return out
        if "memory" in self.dirs:
            d = Path(self.dirs["memory"])
            limit = _read_int(d / "memory.limit_in_bytes")
            out["memory_limit_bytes"] = None if limit is None or limit >= 1 << 62 else limit
            out["memory_usage_bytes"] = _read_int(d / "memory.usage_in_bytes")
        if "pids" in self.dirs:
            d = Path(self.dirs["pids"])
            out["pids_limit"] = _read_int(d / "pids.max")
            out["pids_current"] = _read_int(d / "pids.current")
        if "cpu" in self.dirs:
            d = Path(self.dirs["cpu"])
            cfs_quota, cfs_period = _read_int(d / "cpu.cfs_quota_us"), _read_int(d / "cpu.cfs_period_us")
            out["cpus"] = cfs_quota / cfs_period if cfs_quota and cfs_quota > 0 and cfs_period else None
        return out

    def remove(self, timeout: float = REMOVE_RETRY_SECONDS) -> bool:
        """Remove the job's cgroups; True when none is left. Processes still inside (strays a
        finished runner left behind) are killed first: they belong to the job. Idempotent."""
        if self._removed:
            return True
        if self.pids():
            self.kill()
        deadline = time.monotonic() + timeout
        pending = [Path(d) for d in self.dirs.values()]
        refused: list[Path] = []  # an error other than "busy": retrying will not help
        while True:
            left = []
            for d in pending:
                try:
                    d.rmdir()
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    if exc.errno != errno.EBUSY:
                        log.warning("cannot remove cgroup %s: %s", d, exc)
                        refused.append(d)
                        continue
                    left.append(d)
            pending = left
            if not pending:
                self._removed = not refused
                return not refused
            if time.monotonic() > deadline:
                log.warning("cgroups still busy after %.1f s: %s", timeout, ", ".join(map(str, pending)))
                return False
            # The kernel drops a killed task from its cgroup when it finishes exiting.
            time.sleep(0.01)
