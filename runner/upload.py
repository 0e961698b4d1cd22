"""Upload of result files to the satellite platform (API.md §6).

One multipart POST per file, uncompressed: the file part plus a business-label field and a
file-type field (field names and the auth header name from the job's ``config``). Each file is
retried with exponential backoff (``upload_retries`` retries after the first attempt).

Decision: an upload failure does not fail the task. The local results are complete and kept;
the failure is reported as an ERROR event per file and in the returned summary, which the job
turns into its final message ("completed; upload failed: ..."). A URL refused by the policy of
``runner.urls`` (checked again at connect time) is reported at once, without retries.

The token is sent only in the header. An exception about the request's headers (which quotes
the header value) is reported by its type alone; whatever else a message carries, the job's
context replaces the token in every event (``runner.context``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from protocol.jobs import JobConfig
from runner import urls
from runner.urls import FetchError, UrlPolicy, check_url

#: (business label, file type) per kind of result file.
TRAINING_CONFIG = ("SATEL_AGENT", "cfg_path")
TRAINING_WEIGHTS = ("SATEL_AGENT_WEIGHT", "weight_path")
INFERENCE_RESULT = ("SATEL_AGENT", "")

#: Seconds before the first retry; doubled each time.
BACKOFF_START = 0.5
REQUEST_TIMEOUT = 120.0


@dataclass(frozen=True)
class UploadConfig:
    url: str
    token: str | None
    file_field: str
    label_field: str
    type_field: str
    auth_header: str
    retries: int
    policy: UrlPolicy

    @classmethod
    def from_job(cls, params: dict[str, Any], config: JobConfig) -> UploadConfig:
        """The upload of a job: its ``params`` (``upload_url``, ``token``) over its ``config``."""
        url = params.get("upload_url") or config.upload_url
        if not url:
            raise ValueError("enable_upload is set but neither upload_url nor the configured default is given")
        return cls(
            url=str(url),
            token=params.get("token") or None,
            file_field=config.upload_file_field,
            label_field=config.upload_label_field,
            type_field=config.upload_type_field,
            auth_header=config.upload_auth_header,
            retries=config.upload_retries,
            policy=UrlPolicy.from_config(config),
        )


@dataclass(frozen=True)
class UploadItem:
    path: Path
    label: str
    file_type: str


class Reporter:
    """What the uploader tells the job: ``info(message)`` and ``error(message)``."""

    def __init__(
        self,
        info: Callable[[str], None],
        error: Callable[[str], None],
        wait: Callable[[float], None] = time.sleep,
    ) -> None:
        self.info = info
        self.error = error
        self.wait = wait


def _post(session: requests.Session, cfg: UploadConfig, item: UploadItem) -> None:
    headers = {cfg.auth_header: cfg.token} if cfg.token else {}
    with open(item.path, "rb") as fh:
        response = session.post(
            cfg.url,
            files={cfg.file_field: (item.path.name, fh, "application/octet-stream")},
            data={cfg.label_field: item.label, cfg.type_field: item.file_type},
            headers=headers,
            timeout=REQUEST_TIMEOUT,
            allow_redirects=False,
        )
    with response:
        if not 200 <= response.status_code < 300:
            raise RuntimeError(f"HTTP {response.status_code} {response.reason}")


def _header_error(exc: Exception) -> bool:
    """An error about the request's headers: its message quotes the header value (the token)."""
    return isinstance(exc, (requests.exceptions.InvalidHeader, UnicodeError)) or (
        isinstance(exc, ValueError) and "header" in str(exc).lower()
    )


def _reason(exc: Exception) -> str:
    """What to report of a failed attempt; of a header error only its type."""
    if isinstance(exc, RuntimeError):
        return str(exc)
    if _header_error(exc):
        return f"{type(exc).__name__}: the token is not a valid HTTP header value"
    return f"{type(exc).__name__}: {exc}"  # requests' messages carry the URL, not the headers


def upload(items: list[UploadItem], cfg: UploadConfig, report: Reporter) -> list[str]:
    """Upload each item; returns one line per file that failed after every retry (empty when
    all went through)."""
    try:
        check_url(cfg.url, cfg.policy)
    except FetchError as exc:
        report.error(f"upload refused: {exc}")
        return [str(exc)]
    failures: list[str] = []
    with urls.session(cfg.policy) as session:
        for n, item in enumerate(items, 1):
            delay = BACKOFF_START
            for attempt in range(cfg.retries + 1):
                try:
                    _post(session, cfg, item)
                except FetchError as exc:  # refused at connect time: retrying cannot help
                    failures.append(f"{item.path.name}: {exc}")
                    report.error(f"upload of {item.path.name} refused: {exc}")
                except (requests.RequestException, RuntimeError, OSError, ValueError) as exc:
                    reason = _reason(exc)
                    if attempt < cfg.retries and not _header_error(exc):  # that one cannot heal
                        report.error(
                            f"upload of {item.path.name} failed (attempt {attempt + 1}/{cfg.retries + 1}): "
                            f"{reason}; retrying in {delay:g} s"
                        )
                        report.wait(delay)
                        delay *= 2
                        continue
                    failures.append(f"{item.path.name}: {reason}")
                    tries = f"{attempt + 1} attempt{'s' if attempt else ''}"
                    report.error(f"upload of {item.path.name} failed after {tries}: {reason}")
                else:
                    shown_type = item.file_type or '""'
                    report.info(f"uploaded {item.path.name} ({n}/{len(items)}) as {item.label}/{shown_type}")
                break
    return failures
