"""Data-root confinement: every local path a request names must resolve inside the data roots.

Contract of ``Confinement.resolve``: a relative path is taken relative to ``settings.home``; the
result is made absolute with every symlink followed (``os.path.realpath``, so ``..`` and links
cannot climb out); it must then lie inside one of the (equally resolved) data roots, else
``PathRefused`` names the field and why. ``http://`` and ``https://`` URLs pass through untouched
(the runner fetches them with its own limits); any other scheme is refused.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

_URL_SCHEMES = ("http://", "https://")
#: Longest accepted URL.
MAX_URL = 4096


class PathRefused(ValueError):
    """A path that may not be used: ``field`` names the request field, ``reason`` says why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def is_url(value: str) -> bool:
    return value[:8].lower().startswith(_URL_SCHEMES)


def url_problem(value: str) -> str | None:
    """Why ``value`` is not a well-formed http(s) URL, or None. Syntax only: where it leads
    (which addresses, redirects) is the runner's check, made when it connects."""
    if not is_url(value):
        return "must be an http or https URL"
    if len(value) > MAX_URL:
        return f"is not a valid URL (longer than {MAX_URL} characters)"
    if any(c.isspace() or not c.isprintable() for c in value):
        return "is not a valid URL (whitespace or control characters)"
    try:
        parts = urlsplit(value)
        host, _ = parts.hostname, parts.port
    except ValueError:
        return "is not a valid URL (bad host or port)"
    if not host:
        return "is not a valid URL (no host)"
    return None


def _opened(path: str) -> str | None:
    """What ``path`` names, absolute and symlink-free, in one system call (``O_PATH`` opens
    without reading or needing permission on the file; ``/proc/self/fd`` names what was
    opened); None when it does not exist. ``OSError`` for anything else (a loop, no ``/proc``)."""
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        resolved = os.readlink(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)
    if not resolved.startswith("/") or resolved.endswith(" (deleted)"):
        raise OSError(f"cannot name {path!r} through /proc")
    return resolved


def _realpath(path: str) -> tuple[str, bool]:
    """``(os.path.realpath(path), whether it exists)`` for an absolute ``path``, the kernel
    resolving it: realpath's own walk costs an ``lstat`` per component in Python, and every
    submission resolves several paths. A missing path: its deepest existing ancestor, resolved,
    and the rest of the names as they are (below a missing name nothing exists, so nothing is a
    link) — unless the first missing name is a dangling link or ``..`` follows, which realpath
    itself resolves, as it does anything unusual (a loop, no ``/proc``)."""
    try:
        found = _opened(path)
        if found is not None:
            return found, True
        parts = path.split("/")
        for cut in range(len(parts) - 1, 0, -1):
            rest = [name for name in parts[cut:] if name not in ("", ".")]
            if ".." in rest:
                break
            found = _opened("/".join(parts[:cut]) or "/")
            if found is None:
                continue
            if rest and os.path.islink(os.path.join(found, rest[0])):
                break
            return os.path.join(found, *rest), False
    except OSError:
        pass
    resolved = os.path.realpath(path)
    return resolved, os.path.exists(resolved)


class Confinement:
    """The data roots of one service and the home that relative paths are taken from."""

    def __init__(self, home: Path, roots: Iterable[Path]) -> None:
        self.home = Path(os.path.realpath(home))
        self.roots = tuple(Path(os.path.realpath(r)) for r in roots) or (self.home,)
        # Plain strings on the hot path: every submission resolves several paths.
        self._home = str(self.home)
        self._roots = tuple((str(r), str(r).rstrip(os.sep) + os.sep) for r in self.roots)

    def resolve(self, field: str, value: str, *, must_exist: bool = False, allow_url: bool = False) -> str:
        """The absolute, symlink-free form of ``value`` (or the URL itself when allowed)."""
        if allow_url and is_url(value):
            problem = url_problem(value)
            if problem is not None:
                raise PathRefused(field, problem)
            return value
        if "://" in value:
            scheme = value.split("://", 1)[0]
            allowed = "only http and https URLs are accepted" if allow_url else "a local path is required here"
            raise PathRefused(field, f"URL scheme '{scheme}' is not accepted ({allowed})")
        if not value.strip():
            raise PathRefused(field, "must not be empty")
        if "\x00" in value:
            raise PathRefused(field, "must not contain NUL characters")
        # No "~" expansion: the service user's home directory is nobody's business.
        candidate = value if os.path.isabs(value) else os.path.join(self._home, value)
        resolved, exists = _realpath(candidate)
        if not any(resolved == root or resolved.startswith(prefix) for root, prefix in self._roots):
            roots = ", ".join(root for root, _ in self._roots)
            raise PathRefused(field, f"path '{value}' resolves outside the data roots ({roots})")
        if must_exist and not exists:
            raise PathRefused(field, f"path '{value}' does not exist")
        return resolved
