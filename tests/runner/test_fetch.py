"""Downloads, zips and path confinement: every refusal with its precise reason.

A real ``http.server`` on loopback serves the files and redirects."""

from __future__ import annotations

import io
import stat
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from runner import fetch
from tests.runner.harness import run_job

LIMITS = fetch.Limits(download_max_bytes=1 << 20, download_timeout=30, unzip_max_bytes=1 << 20,
                      unzip_max_ratio=50, unzip_max_entries=100)  # fmt: skip


@pytest.fixture(scope="module")
def server() -> Iterator[dict[str, Any]]:
    """Routes: /file.bin (1 KiB), /big.bin (2 MiB, no Content-Length), /data.zip,
    /redirect/N (N hops to /file.bin), /to-metadata (redirects to 169.254.169.254)."""
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("set/a/1.txt", "one")
        zf.writestr("set/b/2.txt", "two")
    files = {"/file.bin": b"x" * 1024, "/data.zip": archive.getvalue()}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.startswith("/redirect/"):
                n = int(self.path.rsplit("/", 1)[1])
                self.send_response(302)
                self.send_header(
                    "Location", f"/redirect/{n - 1}" if n > 1 else "/file.bin"
                )
                self.end_headers()
            elif self.path == "/to-metadata":
                self.send_response(302)
                self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
                self.end_headers()
            elif self.path == "/big.bin":
                self.send_response(200)
                self.end_headers()  # no Content-Length: the streamed count must stop it
                for _ in range(32):
                    self.wfile.write(b"y" * 65536)
            elif self.path in files:
                self.send_response(200)
                self.send_header("Content-Length", str(len(files[self.path])))
                self.end_headers()
                self.wfile.write(files[self.path])
            else:
                self.send_response(404)
                self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield {"base": f"http://127.0.0.1:{httpd.server_address[1]}", "files": files}
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=10)


def test_download_and_redirects(server: dict[str, Any], tmp_path: Path) -> None:
    path, is_zip = fetch.download(server["base"] + "/file.bin", tmp_path, LIMITS)
    assert path.read_bytes() == server["files"]["/file.bin"] and not is_zip
    path, _ = fetch.download(server["base"] + "/redirect/3", tmp_path / "r", LIMITS)
    assert path.read_bytes() == server["files"]["/file.bin"]
    with pytest.raises(fetch.FetchError, match="more than 3 redirects"):
        fetch.download(server["base"] + "/redirect/4", tmp_path / "r4", LIMITS)
    with pytest.raises(fetch.FetchError, match="169.254.169.254.*cloud metadata"):
        fetch.download(server["base"] + "/to-metadata", tmp_path / "m", LIMITS)
    with pytest.raises(fetch.FetchError, match="HTTP 404"):
        fetch.download(server["base"] + "/missing", tmp_path / "x", LIMITS)


def test_download_size_limit(server: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(fetch.FetchError, match="more than download_max_bytes"):
        fetch.download(server["base"] + "/big.bin", tmp_path, LIMITS)
    assert not list(tmp_path.iterdir())  # the partial file is gone
    small = fetch.Limits(download_max_bytes=100)
    with pytest.raises(fetch.FetchError, match="1024 bytes exceeds download_max_bytes"):
        fetch.download(server["base"] + "/file.bin", tmp_path, small)


@pytest.mark.parametrize(
    "url, reason",
    [
        ("ftp://example.com/x.zip", "only http and https"),
        ("file:///etc/passwd", "only http and https"),
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata address"),
        ("http://169.254.10.1/x", "link-local"),
        ("http://[fe80::1]/x", "link-local"),
        ("http://[fd00:ec2::254]/x", "cloud metadata address"),
        ("http://[::ffff:169.254.169.254]/x", "cloud metadata address"),
        ("http://metadata.google.internal/computeMetadata/v1/", "cloud metadata host"),
    ],
)
def test_refused_urls(url: str, reason: str) -> None:
    with pytest.raises(fetch.FetchError, match=reason):
        fetch.check_url(url)


def test_private_allowed_by_default_and_allowlist() -> None:
    fetch.check_url("http://127.0.0.1:9/x")
    fetch.check_url("http://10.1.2.3/x")
    with pytest.raises(fetch.FetchError, match="not in url_allow_hosts"):
        fetch.check_url("http://127.0.0.1:9/x", ("data.example.org",))
    fetch.check_url("http://localhost:9/x", ("localhost",))


def _zip(path: Path, entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for info, data in entries:
            zf.writestr(info, data)
    return path


def test_zip_extracts_and_unwraps_single_top_folder(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "a.zip", [("data/x/1.txt", b"1"), ("data/y/2.txt", b"2")])
    root = fetch.extract_zip(archive, tmp_path / "out", LIMITS)
    assert root == tmp_path / "out" / "data"
    assert (root / "x" / "1.txt").read_bytes() == b"1" and (
        root / "y" / "2.txt"
    ).read_bytes() == b"2"
    flat = _zip(tmp_path / "b.zip", [("x/1.txt", b"1"), ("top.txt", b"t")])
    assert fetch.extract_zip(flat, tmp_path / "out2", LIMITS) == tmp_path / "out2"


def _symlink_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def _fifo_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFIFO | 0o644) << 16
    return info


@pytest.mark.parametrize(
    "entries, reason",
    [
        (
            [("ok.txt", b"1"), ("../evil.txt", b"x")],
            r"leaves the extraction folder \(\.\.\)",
        ),
        ([("a/../../evil.txt", b"x")], r"leaves the extraction folder"),
        ([("/etc/evil.txt", b"x")], "absolute path"),
        ([(_symlink_info("link"), b"/etc/passwd")], "symbolic link"),
        ([(_fifo_info("pipe"), b"")], "special file"),
        (
            [(f"f{i}.txt", b"x") for i in range(101)],
            "101 entries exceeds unzip_max_entries",
        ),
        (
            [("bomb.bin", b"\0" * (900 << 10))],
            "compression ratio .* exceeds unzip_max_ratio",
        ),
        ([("big.bin", bytes(range(256)) * 8200)], "over unzip_max_bytes"),
    ],
)
def test_unsafe_zips_refused_before_writing(
    entries: list[tuple[Any, bytes]], reason: str, tmp_path: Path
) -> None:
    archive = _zip(tmp_path / "bad.zip", entries)
    with pytest.raises(fetch.FetchError, match=reason):
        fetch.extract_zip(archive, tmp_path / "out", LIMITS)
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "evil.txt").exists()


def test_confine(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (root / "escape").symlink_to(tmp_path / "outside")
    assert fetch.confine(root / "d", (root,)) == (root / "d").resolve()
    with pytest.raises(fetch.FetchError, match="outside the data roots"):
        fetch.confine(root / "escape", (root,))
    with pytest.raises(fetch.FetchError, match="outside the data roots"):
        fetch.confine(root / ".." / "outside", (root,))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fetch.confine(root / "nope", (root,))


@pytest.mark.timeout(100)
def test_training_from_a_zip_bomb_url_fails_clearly(tmp_path: Path) -> None:
    """Through a real runner: a zip bomb given as the training set fails the task, nothing is
    extracted, and the reason is in the task's final message."""
    bomb = _zip(tmp_path / "bomb.zip", [("set/a/x.png", b"\0" * (4 << 20))])
    params = {"model": "resnet18", "num_classes": 1, "train_path": str(bomb), "val_path": str(bomb),
                  "save_path": str(tmp_path / "out"), "num_epochs": 1, "image_size": 32}  # fmt: skip
    rp = run_job("training", params, tmp_path / "task", timeout=90, torch_threads=1,
                 config={"data_roots": [str(tmp_path)]})  # fmt: skip
    assert rp.final is not None and rp.final["status"] == "failed"
    assert "exceeds unzip_max_ratio" in rp.final["message"]
    assert not (tmp_path / "task" / "inputs" / "train" / "set").exists()


@pytest.mark.timeout(100)
def test_job_refuses_paths_outside_data_roots(spectro: Path, tmp_path: Path) -> None:
    params = {
        "input_path": str(spectro),
        "output_path": str(tmp_path / "out"),
        "x": 0,
        "y": 0,
        "width": 8,
        "height": 8,
    }
    rp = run_job("crop", params, tmp_path / "task", timeout=90, torch_threads=1,
                 config={"data_roots": [str(tmp_path)]})  # fmt: skip
    assert rp.final is not None and rp.final["status"] == "failed"
    assert "outside the data roots" in rp.final["message"]
