"""A file system of its own, small enough to fill: a full disk, for real (a tmpfs mounted
below the test's temporary directory, which needs root; the tests that use it skip without).

``fill`` writes a filler file until the file system refuses (``ENOSPC``); from then on every
write that needs a page more fails as on a full disk: SQLite's (``SQLITE_FULL``), an event
file's, a journal's. ``free`` removes the filler.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from pathlib import Path
from types import TracebackType

import pytest

CHUNKS = (1 << 20, 4096, 512, 1)


class SmallDisk:
    def __init__(self, path: Path, mb: int = 32) -> None:
        self.path = path
        self.mb = mb
        self._filler = path / "filler"

    def __enter__(self) -> SmallDisk:
        self.path.mkdir(parents=True, exist_ok=True)
        mount = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={self.mb}m,mode=0700", "tmpfs", str(self.path)],
            capture_output=True,
            text=True,
        )
        if mount.returncode != 0:
            pytest.skip(f"a full disk needs a small file system of its own: mount -t tmpfs: {mount.stderr.strip()}")
        return self

    def fill(self) -> None:
        """Write the filler until the file system is full (the last bytes in ever smaller writes)."""
        fd = os.open(self._filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for size in CHUNKS:
                chunk = b"\0" * size
                with contextlib.suppress(OSError):
                    while os.write(fd, chunk) == size:
                        pass
            with pytest.raises(OSError) as refused:
                os.write(fd, b"\0")
            assert refused.value.errno == errno.ENOSPC
        finally:
            os.close(fd)

    def free(self) -> None:
        self._filler.unlink(missing_ok=True)

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        if subprocess.run(["umount", str(self.path)], capture_output=True).returncode != 0:
            # Still in use (a test that failed left a file open): detached now, gone once closed.
            subprocess.run(["umount", "--lazy", str(self.path)], check=True, capture_output=True)
