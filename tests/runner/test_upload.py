"""Uploads to a fake satellite platform (a real http.server on loopback): exact multipart
requests, retries with backoff, failures reported and local results kept."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from protocol.codec import build
from protocol.jobs import JobConfig
from runner import upload, urls
from tests.runner.satellite import Satellite


@pytest.fixture
def satellite() -> Iterator[Satellite]:
    sat = Satellite()
    yield sat
    sat.close()


class Recorder:
    def __init__(self) -> None:
        self.infos: list[str] = []
        self.errors: list[str] = []
        self.waits: list[float] = []

    def reporter(self) -> upload.Reporter:
        return upload.Reporter(self.infos.append, self.errors.append, self.waits.append)


def _config(url: str, token: str = "t0k", **kw: object) -> upload.UploadConfig:
    params = {"upload_url": url, "token": token}
    config = {"upload_file_field": "file", "upload_label_field": "businessLabel", "upload_type_field": "fileType",
              "upload_auth_header": "X-Token", "upload_retries": 2, "url_allow_loopback": True, **kw}  # fmt: skip
    return upload.UploadConfig.from_job(params, build(JobConfig, config, where="config"))


def test_one_multipart_request_per_file(satellite: Satellite, tmp_path: Path) -> None:
    a, b = tmp_path / "results.json", tmp_path / "results.csv"
    a.write_text('{"x": 1}')
    b.write_bytes(b"image,top_class\n" + bytes(range(256)))
    rec = Recorder()
    items = [
        upload.UploadItem(a, *upload.INFERENCE_RESULT),
        upload.UploadItem(b, *upload.INFERENCE_RESULT),
    ]
    assert upload.upload(items, _config(satellite.url), rec.reporter()) == []
    assert [u.files["file"] for u in satellite.uploads] == [
        ("results.json", a.read_bytes()),
        ("results.csv", b.read_bytes()),
    ]
    for u in satellite.uploads:
        assert u.fields == {"businessLabel": "SATEL_AGENT", "fileType": ""}
        assert u.headers["X-Token"] == "t0k" and "Authorization" not in u.headers
        assert u.headers["Content-Type"].startswith("multipart/form-data")
        assert "Content-Encoding" not in u.headers
    assert len(rec.infos) == 2 and not rec.errors and not rec.waits


def test_retry_after_500_then_success(satellite: Satellite, tmp_path: Path) -> None:
    satellite.fail_first = 2
    f = tmp_path / "config.yaml"
    f.write_text("model: resnet18\n")
    rec = Recorder()
    assert (
        upload.upload(
            [upload.UploadItem(f, *upload.TRAINING_CONFIG)],
            _config(satellite.url),
            rec.reporter(),
        )
        == []
    )
    assert [u.status for u in satellite.uploads] == [500, 500, 200]
    assert rec.waits == [
        upload.BACKOFF_START,
        upload.BACKOFF_START * 2,
    ]  # exponential backoff
    assert len(rec.errors) == 2 and "HTTP 500" in rec.errors[0] and "retrying" in rec.errors[0]
    assert satellite.uploads[-1].fields == {
        "businessLabel": "SATEL_AGENT",
        "fileType": "cfg_path",
    }


def test_failure_after_retries_is_reported_and_file_kept(satellite: Satellite, tmp_path: Path) -> None:
    satellite.fail_first = 100
    f = tmp_path / "best.pth"
    f.write_bytes(b"weights")
    rec = Recorder()
    failures = upload.upload(
        [upload.UploadItem(f, *upload.TRAINING_WEIGHTS)],
        _config(satellite.url),
        rec.reporter(),
    )
    assert len(satellite.uploads) == 3  # the first attempt and upload_retries=2 retries
    assert failures == ["best.pth: HTTP 500 Internal Server Error"]
    assert "failed after 3 attempts" in rec.errors[-1]
    assert f.read_bytes() == b"weights"
    assert all("t0k" not in line for line in rec.errors + rec.infos)


def test_unreachable_and_refused_urls(tmp_path: Path) -> None:
    f = tmp_path / "r.json"
    f.write_text("{}")
    rec = Recorder()
    failures = upload.upload([upload.UploadItem(f, *upload.INFERENCE_RESULT)],
                             _config("http://127.0.0.1:9/upload", upload_retries=0), rec.reporter())  # fmt: skip
    assert len(failures) == 1 and "ConnectionError" in failures[0]
    failures = upload.upload([upload.UploadItem(f, *upload.INFERENCE_RESULT)],
                             _config("http://169.254.169.254/upload"), rec.reporter())  # fmt: skip
    assert "cloud metadata address" in failures[0]


@pytest.mark.parametrize(
    "host, reason, opt_in",
    [("0.0.0.0", "unspecified address", True), ("0", "unspecified address", True),
     ("[::ffff:0.0.0.0]", "unspecified address", True), ("127.0.0.1", "loopback", False),
     ("localhost", "loopback", False)],
)  # fmt: skip
def test_upload_targets_on_this_host_refused(
    satellite: Satellite, tmp_path: Path, host: str, reason: str, opt_in: bool
) -> None:
    """The satellite listens on 127.0.0.1: 0.0.0.0 and 0 would reach it, even with the loopback
    opt-in; loopback itself only with the opt-in. Nothing reaches the server."""
    f = tmp_path / "r.json"
    f.write_text("{}")
    rec = Recorder()
    url = satellite.url.replace("127.0.0.1", host)
    cfg = _config(url, url_allow_loopback=opt_in, url_allow_hosts=[host.strip("[]")])
    failures = upload.upload([upload.UploadItem(f, *upload.INFERENCE_RESULT)], cfg, rec.reporter())
    assert len(failures) == 1 and reason in failures[0] and not rec.waits
    assert not satellite.uploads
    # At connect time too (a DNS answer that changed after the early check meets the same rule).
    with urls.session(cfg.policy) as session, pytest.raises(upload.FetchError, match=reason):
        upload._post(session, cfg, upload.UploadItem(f, *upload.INFERENCE_RESULT))
    assert not satellite.uploads


@pytest.mark.parametrize("token", ["t0k-secret-7\n", " t0k-secret-7", "t0k-secret-7\r\nX-Evil: 1"])
def test_header_errors_never_quote_the_token(satellite: Satellite, tmp_path: Path, token: str) -> None:
    """A token the HTTP library refuses as a header value: the failure names the problem but
    not the value, and is not retried (it cannot heal)."""
    f = tmp_path / "r.json"
    f.write_text("{}")
    rec = Recorder()
    failures = upload.upload([upload.UploadItem(f, *upload.INFERENCE_RESULT)], _config(satellite.url, token),
                             rec.reporter())  # fmt: skip
    assert failures == ["r.json: InvalidHeader: the token is not a valid HTTP header value"]
    assert not satellite.uploads and not rec.waits
    assert all("t0k-secret-7" not in line for line in rec.errors + rec.infos)


def test_no_url_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="neither upload_url nor the configured default"):
        upload.UploadConfig.from_job({"enable_upload": True}, JobConfig())
