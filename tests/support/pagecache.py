"""What of a file the page cache holds (``mincore`` over a shared mapping of it), and whether a
directory's file system lets clean pages go at all (tmpfs keeps them: its pages are the file)."""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
from pathlib import Path

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
_FAILED = ctypes.c_void_p(-1).value


def cached_bytes(path: Path, end: int | None = None) -> int:
    """How many bytes of ``path``'s pages (those wholly before ``end``: all of them when None)
    are in the page cache now, in whole pages."""
    size = path.stat().st_size
    if size == 0:
        return 0
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, _FAILED):
            raise OSError(ctypes.get_errno(), "mmap failed")
        try:
            pages = ctypes.create_string_buffer((size + mmap.PAGESIZE - 1) // mmap.PAGESIZE)
            if _libc.mincore(addr, size, pages) != 0:
                raise OSError(ctypes.get_errno(), "mincore failed")
            whole = len(pages.raw) if end is None else end // mmap.PAGESIZE
            return sum(b & 1 for b in pages.raw[:whole]) * mmap.PAGESIZE
        finally:
            _libc.munmap(addr, size)
    finally:
        os.close(fd)


def drops_clean_pages(directory: Path) -> bool:
    """Whether a synced file in ``directory`` leaves the page cache when told to."""
    probe = directory / ".pagecache-probe"
    fd = os.open(probe, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, b"p" * (1 << 20))
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return cached_bytes(probe) == 0
    finally:
        os.close(fd)
        probe.unlink()
