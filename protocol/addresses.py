"""Socket addresses: every IPC endpoint lives in one runtime directory of mode 0700."""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

#: AF_UNIX paths are limited to 107 bytes (108 with the NUL).
MAX_UNIX_PATH = 100


@dataclass(frozen=True, slots=True)
class Addresses:
    """The three endpoints of one service instance."""

    runtime_dir: Path

    @property
    def control(self) -> str:
        """ROUTER in the supervisor, DEALER in web and the CLI."""
        return f"ipc://{self.runtime_dir / 'control.sock'}"

    @property
    def events_in(self) -> str:
        """SUB bound in the supervisor; each runner's XPUB connects here."""
        return f"ipc://{self.runtime_dir / 'events-in.sock'}"

    @property
    def events_out(self) -> str:
        """PUB bound in the supervisor (stored events, topic = task id); web's SUB connects."""
        return f"ipc://{self.runtime_dir / 'events-out.sock'}"

    def replica(self, replica_id: str) -> str:
        """ROUTER bound in a serving replica (``protocol.serving``); web's and the supervisor's
        DEALERs connect. Named by a digest: as short as ``events-out.sock`` (AF_UNIX)."""
        digest = hashlib.sha1(replica_id.encode()).hexdigest()[:9]
        return f"ipc://{self.runtime_dir / f'r{digest}.sock'}"


def default_runtime_dir(home: Path) -> Path:
    """``<home>/run`` when its socket paths fit AF_UNIX, else a short per-home dir in /tmp."""
    candidate = home.resolve() / "run"
    if len(str(candidate / "events-out.sock")) <= MAX_UNIX_PATH:
        return candidate
    digest = hashlib.sha1(str(home.resolve()).encode()).hexdigest()[:12]
    return Path("/tmp") / f"rfuav-{os.getuid()}-{digest}"


def ensure_runtime_dir(path: Path) -> Path:
    """Create ``path`` with mode 0700 (tightening it if it exists) and return it."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if stat.S_IMODE(path.stat().st_mode) != 0o700:
        path.chmod(0o700)
    return path
