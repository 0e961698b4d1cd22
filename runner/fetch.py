"""Getting a job's inputs: URL downloads, safe zip extraction, and path confinement.

Contracts (every refusal raises ``FetchError`` with a precise message, which fails the task):

- URLs: the policy of ``runner.urls`` (http/https only; unspecified, link-local and metadata
  addresses always refused; loopback only with ``url_allow_loopback``; optional host allowlist),
  checked before each request and again at connect time for every connection. At most
  ``MAX_REDIRECTS`` redirects, each checked again. Downloads stream into the task directory under
  a size (``download_max_bytes``) and a total time (``download_timeout``) limit: a server that
  stalls or trickles is cut off at the deadline.
- Zips: entries with absolute paths, ``..``, links or special files, encrypted entries, more
  than ``unzip_max_entries`` entries, a total over ``unzip_max_bytes`` or a compression ratio
  over ``unzip_max_ratio`` are refused before anything is written; the byte count is enforced
  again while writing (declared sizes can lie). A zip whose content is one top folder unwraps to
  it. A downloaded zip is removed after extraction; a user's local zip is left alone.
- Local paths must resolve (symlinks followed) inside ``data_roots`` — defence in depth, web
  checks first. Everything a job writes goes through ``runner.safefs.OutputTree``: no write
  follows a symbolic link below a confined folder.
"""

from __future__ import annotations

import stat
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import urljoin, urlsplit

import requests
import urllib3

from protocol.jobs import JobConfig
from runner import urls
from runner.safefs import OutputTree
from runner.urls import FetchError, UrlPolicy, check_url, is_url

__all__ = ["FetchError", "Inputs", "Limits", "check_url", "confine", "download", "extract_zip", "is_url"]

MAX_REDIRECTS = 3
CHUNK = 1 << 20
_ZIP_TYPES = ("application/zip", "application/x-zip-compressed")
_IGNORED_TOP = ("__MACOSX",)


_DEFAULTS = JobConfig()


@dataclass(frozen=True)
class Limits:
    """A job's fetch limits: ``from_config`` in a job; the settings' defaults where not given."""

    download_max_bytes: int = _DEFAULTS.download_max_bytes
    download_timeout: float = _DEFAULTS.download_timeout
    unzip_max_bytes: int = _DEFAULTS.unzip_max_bytes
    unzip_max_ratio: float = _DEFAULTS.unzip_max_ratio
    unzip_max_entries: int = _DEFAULTS.unzip_max_entries
    url_policy: UrlPolicy = field(default_factory=UrlPolicy)
    data_roots: tuple[Path, ...] = ()

    @classmethod
    def from_config(cls, config: JobConfig) -> Limits:
        """The limits of the job spec's ``config``."""
        return cls(
            download_max_bytes=config.download_max_bytes,
            download_timeout=config.download_timeout,
            unzip_max_bytes=config.unzip_max_bytes,
            unzip_max_ratio=config.unzip_max_ratio,
            unzip_max_entries=config.unzip_max_entries,
            url_policy=UrlPolicy.from_config(config),
            data_roots=tuple(Path(r) for r in config.data_roots),
        )


# -- downloads ----------------------------------------------------------------------------
def _filename(url: str) -> str:
    name = PurePosixPath(urlsplit(url).path).name
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in name).lstrip(".")
    return safe or "download"


def download(
    url: str,
    dest_dir: Path,
    limits: Limits,
    check_stop: Callable[[], None] | None = None,
) -> tuple[Path, bool]:
    """Download ``url`` into ``dest_dir`` (created); returns ``(path, looks_like_zip)``."""
    deadline = time.monotonic() + limits.download_timeout
    dest_dir.mkdir(parents=True, exist_ok=True)
    current = url
    with urls.session(limits.url_policy) as session:
        for _ in range(MAX_REDIRECTS + 1):
            check_url(current, limits.url_policy)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _timeout(url, limits)
            try:
                response = session.get(
                    current,
                    stream=True,
                    allow_redirects=False,
                    timeout=(min(30.0, remaining), min(60.0, remaining)),
                )
            except requests.RequestException as exc:
                if time.monotonic() >= deadline:
                    raise _timeout(url, limits) from None
                raise FetchError(f"download of {current} failed: {exc}") from None
            if response.is_redirect:
                location = response.headers.get("Location", "")
                response.close()
                current = urljoin(current, location)
                continue
            with response:
                return _save(response, current, dest_dir, limits, deadline, check_stop)
        raise FetchError(f"download of {url} refused: more than {MAX_REDIRECTS} redirects")


def _timeout(url: str, limits: Limits) -> FetchError:
    return FetchError(f"download of {url} exceeded download_timeout ({limits.download_timeout:g} s)")


def _chunks(response: requests.Response, deadline: float) -> Iterator[bytes]:
    """The body as it arrives (``read1``: each piece as soon as the socket has it). At the
    deadline a timer shuts the socket down, so a server that stalls or trickles cannot hold a
    read past it."""

    def cut() -> None:
        try:
            response.raw.shutdown()
        except (ValueError, RuntimeError, OSError):  # already released or closed
            pass

    timer = threading.Timer(max(0.0, deadline - time.monotonic()), cut)
    timer.daemon = True
    timer.start()
    try:
        while chunk := response.raw.read1(CHUNK, decode_content=True):
            yield chunk
    finally:
        timer.cancel()


def _save(
    response: requests.Response,
    url: str,
    dest_dir: Path,
    limits: Limits,
    deadline: float,
    check_stop: Callable[[], None] | None,
) -> tuple[Path, bool]:
    if response.status_code != 200:
        raise FetchError(f"download of {url} failed: HTTP {response.status_code} {response.reason}")
    declared = response.headers.get("Content-Length")
    if declared and declared.isdigit() and int(declared) > limits.download_max_bytes:
        raise FetchError(
            f"download of {url} refused: {declared} bytes exceeds download_max_bytes ({limits.download_max_bytes})"
        )
    name = _filename(url)
    size = 0
    try:
        with OutputTree(dest_dir).create(name) as out:
            for chunk in _chunks(response, deadline):
                size += len(chunk)
                if size > limits.download_max_bytes:
                    raise FetchError(
                        f"download of {url} refused: more than download_max_bytes ({limits.download_max_bytes}) bytes"
                    )
                if check_stop is not None:
                    check_stop()
                out.write(chunk)
            if time.monotonic() >= deadline:  # the timer cut the body short
                raise _timeout(url, limits)
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
        if time.monotonic() >= deadline:
            raise _timeout(url, limits) from None
        raise FetchError(f"download of {url} failed: {type(exc).__name__}: {exc}") from None
    content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
    return dest_dir / name, name.lower().endswith(".zip") or content_type in _ZIP_TYPES


# -- zips -------------------------------------------------------------------------------
def _check_member(info: zipfile.ZipInfo) -> None:
    name = info.filename.replace("\\", "/")
    parts = PurePosixPath(name).parts
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise FetchError(f"zip refused: entry {info.filename!r} has an absolute path")
    if ".." in parts:
        raise FetchError(f"zip refused: entry {info.filename!r} leaves the extraction folder (..)")
    kind = stat.S_IFMT(info.external_attr >> 16)  # 0: no Unix type recorded (a plain file)
    if kind == stat.S_IFLNK:
        raise FetchError(f"zip refused: entry {info.filename!r} is a symbolic link")
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise FetchError(f"zip refused: entry {info.filename!r} is a special file")
    if info.flag_bits & 0x1:
        raise FetchError(f"zip refused: entry {info.filename!r} is encrypted")


def extract_zip(archive: Path, dest: Path, limits: Limits) -> Path:
    """Extract ``archive`` into ``dest`` (created) after checking every entry; returns the data
    root (``dest``, or its single top folder)."""
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise FetchError(f"{archive.name} is not a readable zip: {exc}") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > limits.unzip_max_entries:
            raise FetchError(
                f"zip refused: {len(infos)} entries exceeds unzip_max_entries ({limits.unzip_max_entries})"
            )
        for info in infos:
            _check_member(info)
        total = sum(i.file_size for i in infos)
        packed = sum(i.compress_size for i in infos)
        if total > limits.unzip_max_bytes:
            raise FetchError(f"zip refused: expands to {total} bytes, over unzip_max_bytes ({limits.unzip_max_bytes})")
        if total and total / max(packed, 1) > limits.unzip_max_ratio:
            raise FetchError(
                f"zip refused: compression ratio {total / max(packed, 1):.0f} exceeds "
                f"unzip_max_ratio ({limits.unzip_max_ratio:g}) — a zip bomb?"
            )
        dest.mkdir(parents=True, exist_ok=True)
        tree = OutputTree(dest)
        written = 0
        for info in infos:
            rel = PurePosixPath(info.filename.replace("\\", "/"))
            if not rel.parts:
                continue  # "./": the extraction folder itself
            if info.is_dir():
                tree.mkdir(rel)
                continue
            try:
                with zf.open(info) as src, tree.create(rel) as out:
                    while chunk := src.read(CHUNK):
                        written += len(chunk)
                        if written > limits.unzip_max_bytes:
                            raise FetchError(f"zip refused: expands past unzip_max_bytes ({limits.unzip_max_bytes})")
                        out.write(chunk)
            except (zipfile.BadZipFile, OSError, EOFError) as exc:
                raise FetchError(f"zip {archive.name}: cannot extract {info.filename!r}: {exc}") from None
    return _unwrap(dest)


def _unwrap(dest: Path) -> Path:
    entries = [p for p in dest.iterdir() if not p.name.startswith(".") and p.name not in _IGNORED_TOP]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return dest


# -- local paths ------------------------------------------------------------------------
def confine(path: str | Path, roots: tuple[Path, ...], *, must_exist: bool = True) -> Path:
    """``path`` resolved (symlinks followed); refused unless inside one of ``roots``.
    With no roots configured there is nothing to check against."""
    resolved = Path(path).expanduser().resolve(strict=False)
    if must_exist and not resolved.exists():
        raise FileNotFoundError(f"path {path} does not exist")
    if roots and not any(resolved.is_relative_to(r.resolve()) for r in roots):
        raise FetchError(f"path {path} is outside the data roots ({', '.join(str(r) for r in roots)})")
    return resolved


class Inputs:
    """Turns a job's path parameters into local paths inside its task directory."""

    def __init__(
        self,
        task_dir: Path,
        limits: Limits,
        check_stop: Callable[[], None] | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.task_dir = task_dir
        self.task_tree = OutputTree(task_dir)
        self.limits = limits
        self.check_stop = check_stop
        self.log = log or (lambda message: None)

    def resolve(self, value: str, purpose: str) -> Path:
        """A URL (downloaded, a zip extracted and removed), a local zip (extracted into the
        task directory) or a local path (confined), as a local path."""
        if is_url(value):
            downloads = self.task_tree.mkdir(f"downloads/{purpose}")
            path, is_zip = download(value, downloads, self.limits, self.check_stop)
            self.log(f"{purpose}: downloaded {value} ({path.stat().st_size} bytes)")
            if not is_zip:
                return path
            try:
                root = extract_zip(path, self.task_tree.mkdir(f"inputs/{purpose}"), self.limits)
            finally:
                path.unlink(missing_ok=True)
            self.log(f"{purpose}: extracted to {root}")
            return root
        local = confine(value, self.limits.data_roots)
        if local.is_file() and local.suffix.lower() == ".zip":
            root = extract_zip(local, self.task_tree.mkdir(f"inputs/{purpose}"), self.limits)
            self.log(f"{purpose}: extracted {local.name} to {root}")
            return root
        return local

    def resolve_file(self, value: str, purpose: str, suffixes: tuple[str, ...]) -> Path:
        """Like ``resolve`` but for one file (config, weights): a folder or zip must hold exactly
        one file with one of ``suffixes``."""
        path = self.resolve(value, purpose)
        if path.is_file():
            return path
        matches = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
        if len(matches) != 1:
            raise FetchError(
                f"{purpose}: expected exactly one {'/'.join(suffixes)} file in {value}, found {len(matches)}"
            )
        return matches[0]

    def output(self, value: str) -> OutputTree:
        """A local output folder (created), confined to the data roots; every write below it
        goes through the returned ``OutputTree`` (no symbolic link followed)."""
        if is_url(value):
            raise FetchError(f"output path {value!r} must be a local folder, not a URL")
        path = confine(value, self.limits.data_roots, must_exist=False)
        path.mkdir(parents=True, exist_ok=True)
        return OutputTree(path)
