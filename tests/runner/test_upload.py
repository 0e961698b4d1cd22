"""Uploads to a fake satellite platform (a real http.server on loopback): exact multipart
requests, retries with backoff, failures reported and local results kept."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from runner import upload
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


def _config(url: str, **kw: object) -> upload.UploadConfig:
    params = {"upload_url": url, "token": "t0k"}
    config = {"upload_file_field": "file", "upload_label_field": "businessLabel", "upload_type_field": "fileType",
              "upload_auth_header": "X-Token", "upload_retries": 2, **kw}  # fmt: skip
    return upload.UploadConfig.from_job(params, config)


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
    assert (
        len(rec.errors) == 2
        and "HTTP 500" in rec.errors[0]
        and "retrying" in rec.errors[0]
    )
    assert satellite.uploads[-1].fields == {
        "businessLabel": "SATEL_AGENT",
        "fileType": "cfg_path",
    }


def test_failure_after_retries_is_reported_and_file_kept(
    satellite: Satellite, tmp_path: Path
) -> None:
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


def test_no_url_is_a_clear_error() -> None:
    with pytest.raises(
        ValueError, match="neither upload_url nor the configured default"
    ):
        upload.UploadConfig.from_job({"enable_upload": True}, {})
