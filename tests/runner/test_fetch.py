"""Downloads, zips, the URL policy and path confinement: every refusal with its precise reason.

A real ``http.server`` on loopback serves the files and redirects (loopback URLs need the
``allow_loopback`` opt-in, ``RFUAV_URL_ALLOW_LOOPBACK=1``, so the limits here set it)."""

from __future__ import annotations

import io
import stat
import threading
import time
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from runner import fetch, urls
from runner.urls import UrlPolicy
from tests.runner.harness import run_job

LOOPBACK = UrlPolicy(allow_loopback=True)
LIMITS = fetch.Limits(download_max_bytes=1 << 20, download_timeout=30, unzip_max_bytes=1 << 20,
                      unzip_max_ratio=50, unzip_max_entries=100, url_policy=LOOPBACK)  # fmt: skip


@pytest.fixture(scope="module")
def server() -> Iterator[dict[str, Any]]:
    """Routes: /file.bin (1 KiB), /big.bin (2 MiB, no Content-Length), /data.zip,
    /redirect/N (N hops to /file.bin), /to-metadata (redirects to 169.254.169.254), /to-zero
    (redirects to 0.0.0.0 on this server's port), /slow.bin (1 MiB announced, one byte per 50
    ms), /stall.bin (headers, then nothing). ``requests`` lists every path asked for."""
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("set/a/1.txt", "one")
        zf.writestr("set/b/2.txt", "two")
    files = {"/file.bin": b"x" * 1024, "/data.zip": archive.getvalue()}
    requests: list[str] = []
    stop = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            if self.path in ("/slow.bin", "/stall.bin"):
                self.send_response(200)
                self.send_header("Content-Length", str(1 << 20))
                self.end_headers()
                # The server's own pace (the client under test is cut off by its deadline).
                while self.path == "/slow.bin" and not stop.wait(0.05):
                    try:
                        self.wfile.write(b"z")
                        self.wfile.flush()
                    except OSError:
                        return
                stop.wait(30)
            elif self.path == "/to-zero":
                self.send_response(302)
                self.send_header("Location", f"http://0.0.0.0:{self.server.server_address[1]}/file.bin")
                self.end_headers()
            elif self.path.startswith("/redirect/"):
                n = int(self.path.rsplit("/", 1)[1])
                self.send_response(302)
                self.send_header("Location", f"/redirect/{n - 1}" if n > 1 else "/file.bin")
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
    port = httpd.server_address[1]
    yield {"base": f"http://127.0.0.1:{port}", "port": port, "files": files, "requests": requests}
    stop.set()
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
    small = fetch.Limits(download_max_bytes=100, url_policy=LOOPBACK)
    with pytest.raises(fetch.FetchError, match="1024 bytes exceeds download_max_bytes"):
        fetch.download(server["base"] + "/file.bin", tmp_path, small)


ALWAYS_REFUSED = [
    ("http://0.0.0.0:9/x", "0.0.0.0, an unspecified address"),
    ("http://0:9/x", "0.0.0.0, an unspecified address"),
    ("http://0.1.2.3:9/x", "0.1.2.3, an unspecified address"),
    ("http://[::]:9/x", ":: ?, an unspecified address"),
    ("http://[::ffff:0.0.0.0]:9/x", "an unspecified address"),
    ("http://169.254.169.254/latest/meta-data/", "cloud metadata address"),
    ("http://169.254.10.1/x", "link-local"),
    ("http://[fe80::1]/x", "link-local"),
    ("http://[fd00:ec2::254]/x", "cloud metadata address"),
    ("http://[::ffff:169.254.169.254]/x", "cloud metadata address"),
    ("http://[::ffff:a9fe:a9fe]/x", "cloud metadata address"),
    ("http://[64:ff9b::169.254.169.254]/x", "cloud metadata address"),
    ("http://[2002:a9fe:a9fe::1]/x", "cloud metadata address"),
]


@pytest.mark.parametrize(
    "url, reason",
    [
        ("ftp://example.com/x.zip", "only http and https"),
        ("file:///etc/passwd", "only http and https"),
        ("http://metadata.google.internal/computeMetadata/v1/", "cloud metadata host"),
        ("http://:80/x", "no host"),
        ("http://example.org:99999/x", "out of range"),
        *ALWAYS_REFUSED,
    ],
)
def test_refused_urls(url: str, reason: str) -> None:
    with pytest.raises(fetch.FetchError, match=reason):
        fetch.check_url(url)


@pytest.mark.parametrize("url, reason", ALWAYS_REFUSED)
def test_always_refused_even_when_allowlisted_and_loopback_allowed(url: str, reason: str) -> None:
    host = urlsplit(url).hostname
    assert host is not None
    with pytest.raises(fetch.FetchError, match=reason):
        fetch.check_url(url, UrlPolicy(allow_hosts=(host,), allow_loopback=True))


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9/x", "http://127.8.9.10:9/x", "http://localhost:9/x", "http://[::1]:9/x",
            "http://[::ffff:127.0.0.1]:9/x"],
)  # fmt: skip
def test_loopback_only_with_the_opt_in(url: str) -> None:
    with pytest.raises(fetch.FetchError, match="loopback .*RFUAV_URL_ALLOW_LOOPBACK=1"):
        fetch.check_url(url)
    host = urlsplit(url).hostname
    assert host is not None
    with pytest.raises(fetch.FetchError, match="loopback"):  # an allowlist is no opt-in
        fetch.check_url(url, UrlPolicy(allow_hosts=(host,)))
    fetch.check_url(url, LOOPBACK)


def test_private_allowed_by_default_and_allowlist() -> None:
    fetch.check_url("http://10.1.2.3/x")
    fetch.check_url("http://192.168.1.20:8080/x")
    with pytest.raises(fetch.FetchError, match="not in url_allow_hosts"):
        fetch.check_url("http://127.0.0.1:9/x", UrlPolicy(("data.example.org",), allow_loopback=True))
    fetch.check_url("http://localhost:9/x", UrlPolicy(("localhost",), allow_loopback=True))


@pytest.mark.parametrize("host", ["0.0.0.0", "0", "[::ffff:0.0.0.0]", "localhost"])
def test_downloads_to_this_host_refused_at_connect_time(server: dict[str, Any], host: str, tmp_path: Path) -> None:
    """Through the real server's port: by direct URL (the early check) and through the
    connection itself (``urls.session``, the check a changed DNS answer meets)."""
    url = f"http://{host}:{server['port']}/file.bin"
    before = len(server["requests"])
    limits = fetch.Limits(url_policy=UrlPolicy(allow_hosts=(host.strip("[]"),)))
    with pytest.raises(fetch.FetchError, match="unspecified address|loopback"):
        fetch.download(url, tmp_path, limits)
    with urls.session(UrlPolicy()) as session, pytest.raises(fetch.FetchError, match="unspecified address|loopback"):
        session.get(url, timeout=10)
    if host != "localhost":  # not even with the loopback opt-in
        with urls.session(LOOPBACK) as session, pytest.raises(fetch.FetchError, match="unspecified address"):
            session.get(url, timeout=10)
    assert len(server["requests"]) == before  # nothing reached the server
    assert not list(tmp_path.iterdir())
    with urls.session(LOOPBACK) as session:  # the server is there: loopback with the opt-in
        assert session.get(server["base"] + "/file.bin", timeout=10).content == server["files"]["/file.bin"]


def test_redirect_to_this_host_refused(server: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(fetch.FetchError, match="0.0.0.0, an unspecified address"):
        fetch.download(server["base"] + "/to-zero", tmp_path, LIMITS)
    assert server["requests"][-1] == "/to-zero"  # the hop to 0.0.0.0 never connected
    loopback_off = fetch.Limits(url_policy=UrlPolicy())
    with pytest.raises(fetch.FetchError, match="loopback"):
        fetch.download(server["base"] + "/redirect/1", tmp_path, loopback_off)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("path", ["/slow.bin", "/stall.bin"])
def test_download_time_limit_cuts_slow_and_stalled_servers(server: dict[str, Any], path: str, tmp_path: Path) -> None:
    limits = fetch.Limits(download_timeout=1.0, url_policy=LOOPBACK)
    started = time.monotonic()
    with pytest.raises(fetch.FetchError, match=r"exceeded download_timeout \(1 s\)"):
        fetch.download(server["base"] + path, tmp_path, limits)
    assert time.monotonic() - started < 10
    assert not list(tmp_path.iterdir())  # no partial file left


def _zip(path: Path, entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for info, data in entries:
            zf.writestr(info, data)
    return path


def test_zip_extracts_and_unwraps_single_top_folder(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "a.zip", [("data/x/1.txt", b"1"), ("data/y/2.txt", b"2")])
    root = fetch.extract_zip(archive, tmp_path / "out", LIMITS)
    assert root == tmp_path / "out" / "data"
    assert (root / "x" / "1.txt").read_bytes() == b"1" and (root / "y" / "2.txt").read_bytes() == b"2"
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
def test_unsafe_zips_refused_before_writing(entries: list[tuple[Any, bytes]], reason: str, tmp_path: Path) -> None:
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


@pytest.mark.timeout(100)
def test_job_download_time_limit(server: dict[str, Any], tmp_path: Path) -> None:
    """RFUAV_DOWNLOAD_TIMEOUT through a real runner: a server trickling its body fails the job
    with that reason once the limit is reached, and leaves no partial download."""
    params = {"input_path": server["base"] + "/slow.bin", "output_path": str(tmp_path / "out"),
              "x": 0, "y": 0, "width": 8, "height": 8}  # fmt: skip
    config = {"data_roots": [str(tmp_path)], "download_timeout": 1, "url_allow_loopback": True}
    rp = run_job("crop", params, tmp_path / "task", timeout=90, torch_threads=1, config=config)
    assert rp.final is not None and rp.final["status"] == "failed", rp.log_tail()
    assert rp.final["message"] == f"FetchError: download of {params['input_path']} exceeded download_timeout (1 s)"
    assert not [p for p in (tmp_path / "task" / "downloads").rglob("*") if p.is_file()]
