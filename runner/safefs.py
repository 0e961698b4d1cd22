"""Writing below an output folder without ever following a symbolic link out of it.

``OutputTree(root)`` takes a folder that was already confined (resolved inside the data roots,
or the task directory) and creates every sub-folder and file below it through directory file
descriptors, one path component at a time, with ``O_NOFOLLOW``:

- a symbolic link anywhere below ``root`` (a folder on the way, or the file itself) refuses the
  write with ``UnsafePath`` naming it — the job fails with that reason and nothing is written
  through the link;
- a file is written to a new temporary entry (``O_CREAT | O_EXCL | O_NOFOLLOW``) in its folder
  and renamed over its name when complete: an existing file is replaced, never written into (a
  hard link to a file elsewhere keeps its content), and a reader or a kill never sees half a file.
"""

from __future__ import annotations

import errno
import io
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import IO

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafePath(ValueError):
    """A write below an output folder that would go through a symbolic link (or a non-folder)."""


class OutputTree:
    """Files and folders below ``root`` (see the module docstring). ``rel`` arguments are
    relative paths below ``root`` without ``..``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, rel: str | PurePosixPath | Path = "") -> Path:
        return self.root / self._parts(rel)[1] if str(rel) else self.root

    def _parts(self, rel: str | PurePosixPath | Path) -> tuple[tuple[str, ...], Path]:
        parts = PurePosixPath(str(rel)).parts
        if not parts or any(p in ("", ".", "..", "/") for p in parts):
            raise UnsafePath(f"{rel!r} is not a plain relative path below {self.root}")
        return parts, Path(*parts)

    def _refused(self, rel: Path, why: str) -> UnsafePath:
        return UnsafePath(f"refused to write {self.root / rel}: {why}")

    def _open_dir(self, parts: tuple[str, ...], create: bool) -> int:
        """A descriptor of ``root/parts`` (created when ``create``), no symlink followed."""
        try:
            fd = os.open(self.root, _DIR_FLAGS)
        except OSError as exc:
            raise self._refused(Path(), _why(exc, "the output folder")) from None
        done: list[str] = []
        try:
            for part in parts:
                done.append(part)
                try:
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    try:
                        os.mkdir(part, 0o777, dir_fd=fd)
                    except FileExistsError:
                        pass
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR) and _is_link(part, fd):
                        exc = OSError(errno.ELOOP, "a symbolic link")
                    raise self._refused(Path(*done), _why(exc, "/".join(done))) from None
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    def mkdir(self, rel: str | PurePosixPath | Path = "") -> Path:
        """Create ``root/rel`` and the folders on the way; returns its path."""
        if str(rel):
            parts, path = self._parts(rel)
            os.close(self._open_dir(parts, create=True))
            return self.root / path
        os.close(self._open_dir((), create=False))
        return self.root

    @contextmanager
    def create(self, rel: str | PurePosixPath | Path) -> Iterator[IO[bytes]]:
        """A binary file object for ``root/rel``; the file takes its name when the block ends
        without an exception (otherwise nothing is left behind)."""
        parts, path = self._parts(rel)
        dir_fd = self._open_dir(parts[:-1], create=True)
        name = parts[-1]
        tmp = f".{name}.{secrets.token_hex(4)}.tmp"
        try:
            try:
                existing = os.lstat(name, dir_fd=dir_fd)
            except FileNotFoundError:
                pass
            else:
                if stat.S_ISLNK(existing.st_mode):
                    raise self._refused(path, f"{path} is a symbolic link")
                if stat.S_ISDIR(existing.st_mode):
                    raise self._refused(path, f"{path} is a folder")
            fd = os.open(tmp, _NEW_FILE_FLAGS, 0o644, dir_fd=dir_fd)
            try:
                with os.fdopen(fd, "wb") as fh:
                    yield fh
                os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except BaseException:
                try:
                    os.unlink(tmp, dir_fd=dir_fd)
                except FileNotFoundError:
                    pass
                raise
        finally:
            os.close(dir_fd)

    def write_bytes(self, rel: str | PurePosixPath | Path, data: bytes) -> Path:
        with self.create(rel) as fh:
            fh.write(data)
        return self.path(rel)

    def write_text(self, rel: str | PurePosixPath | Path, text: str) -> Path:
        return self.write_bytes(rel, text.encode("utf-8"))

    def write_with(self, rel: str | PurePosixPath | Path, writer: Callable[[IO[bytes]], object]) -> Path:
        """``writer(file object)`` writes the content (``torch.save``, ``csv``…)."""
        with self.create(rel) as fh:
            writer(fh)
        return self.path(rel)

    def copy_from(self, source: Path, rel: str | PurePosixPath | Path) -> Path:
        """Copy the file ``source`` to ``root/rel``."""
        with open(source, "rb") as src, self.create(rel) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        return self.path(rel)


def text_writer(write: Callable[[io.TextIOBase], object]) -> Callable[[IO[bytes]], object]:
    """Adapt a writer of text (UTF-8, universal newlines off) to ``OutputTree.write_with``."""

    def run(fh: IO[bytes]) -> None:
        text = io.TextIOWrapper(fh, encoding="utf-8", newline="")
        try:
            write(text)
            text.flush()
        finally:
            text.detach()

    return run


def _is_link(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(name, dir_fd=dir_fd).st_mode)
    except OSError:
        return False


def _why(exc: OSError, what: str) -> str:
    if exc.errno == errno.ELOOP:
        return f"{what} is a symbolic link"
    if exc.errno == errno.ENOTDIR:
        return f"{what} is not a folder"
    return f"{what}: {exc.strerror}"
