"""Schemathesis hooks for ``tests/web/test_openapi.py`` (loaded by the CLI via SCHEMATHESIS_HOOKS).

- ``envelope``: a check, every JSON answer (but /openapi.json) is ``{code, msg, data}`` with
  ``code`` equal to the HTTP status, and an error has a message; the article's ``/predict`` and
  ``/predict_batch`` may answer an error as ``{"detail": message}`` instead (their own shape).
- ``before_call``: in the service under test every task stays pending (all limits 0), and an
  event stream follows a live task until it ends, so a stream of a live task would never end.
  Before a stream is requested its task is cancelled: the stream then replays the stored log and
  ends (or answers 204 or 400 by its Last-Event-ID), which is what is checked.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import quote

import httpx
import schemathesis

STREAM_SUFFIXES = ("/logs", "/events")
#: The article's routes: their answers have no envelope (``web.routes``, ``envelope=False``).
ARTICLE_PATHS = ("/predict", "/predict_batch")


@schemathesis.check
def envelope(ctx: Any, response: Any, case: Any) -> bool | None:
    ctype = response.headers.get("content-type") or [""]
    ctype = ctype[0] if isinstance(ctype, list) else ctype
    if not ctype.startswith("application/json") or case.path == "/openapi.json":
        return None
    body = response.json()
    if case.path in ARTICLE_PATHS and isinstance(body, dict) and set(body) == {"detail"}:
        if response.status_code < 400 or not (isinstance(body["detail"], str) and body["detail"]):
            raise AssertionError(f"an article route's error without a message, or with {response.status_code}")
        return None
    if not (isinstance(body, dict) and set(body) == {"code", "msg", "data"}):
        raise AssertionError(f"not the {{code, msg, data}} envelope: {str(body)[:300]}")
    if body["code"] != response.status_code:
        raise AssertionError(f"envelope code {body['code']} != HTTP status {response.status_code}")
    if response.status_code >= 400 and not body["msg"]:
        raise AssertionError("an error answer without a message")
    return None


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    path = str(case.path)
    if path.startswith("/api/v2/tasks/") and path.endswith("/logs"):
        return  # the JSON array of stored events: it never waits
    task_id = (case.path_parameters or {}).get("task_id")
    if path.endswith(STREAM_SUFFIXES) and isinstance(task_id, str):
        base = os.environ["RFUAV_FUZZ_BASE_URL"]
        # Unknown ids and ids no URL can carry answer 404 here as in the stream: nothing to do.
        httpx.post(f"{base}/api/v2/tasks/{quote(task_id, safe='')}/cancel", timeout=30)
