"""``RFUAVClient``: the Python client of the HTTP API (the original client's method names).

Every method returns the envelope's ``data`` and raises ``RFUAVError`` (``code``, ``msg``,
``data``) for an error envelope; ``code`` is 0 when the service could not be reached at all.
``stream_training_logs`` (and ``stream_events``) yield event dicts and, when the connection
drops, reconnect with ``Last-Event-ID`` so no event is lost or repeated; they end after the
task's final status event.

    client = RFUAVClient("http://127.0.0.1:8000", token=None)
    task = client.start_training(model="resnet18", num_classes=2, train_path="data/train",
                                 val_path="data/val", save_path="models/out", num_epochs=1)
    for event in client.stream_training_logs(task["task_id"]):
        print(event["level"], event["message"])

Online serving (deploy, deployments, predict, predict_batch, reload, undeploy,
wait_deployment): ``web.serving.client``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Self

import httpx
import orjson
from httpx_sse import SSEError, connect_sse

from protocol.events import is_final
from protocol.tasks import FINAL_STATUSES
from web.serving.client import ServingMethods


class RFUAVError(Exception):
    """An error answer of the service (``code`` = HTTP status) or no answer (``code`` = 0)."""

    def __init__(self, code: int, msg: str, data: Any = None) -> None:
        super().__init__(f"{code}: {msg}")
        self.code = code
        self.msg = msg
        self.data = data if data is not None else {}


def _drop_none(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


@dataclass
class _Stream:
    """Where one ``stream_events`` stands: the last event's ``seq`` seen, consecutive failed
    connections, and whether the stream has ended."""

    url: str
    last: int
    deadline: float | None
    failures: int = 0
    done: bool = False

    def remaining(self) -> float | None:
        """Seconds left before ``deadline`` (None: no deadline)."""
        return None if self.deadline is None else self.deadline - time.monotonic()


class RFUAVClient(ServingMethods):
    """A synchronous client (httpx) for one service; the serving methods (deploy, predict, …)
    are ``web.serving.client``'s."""

    def __init__(
        self, base_url: str = "http://127.0.0.1:8000", token: str | None = None, timeout: float = 30.0
    ) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing --------------------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        json: Any = None,
        params: dict[str, Any] | None = None,
        *,
        content: bytes | None = None,
        content_type: str | None = None,
    ) -> Any:
        """One request (a JSON body, or ``content`` of ``content_type``); the envelope's ``data``
        or ``RFUAVError``."""
        headers = {"Content-Type": content_type} if content_type else None
        try:
            response = self._http.request(method, path, json=json, params=params, content=content, headers=headers)
        except httpx.TransportError as exc:
            raise RFUAVError(0, f"cannot reach {self.base_url}: {exc}") from None
        try:
            body = response.json()
        except ValueError:
            raise RFUAVError(response.status_code, f"non-JSON answer: {response.text[:200]}") from None
        if not isinstance(body, dict) or "code" not in body:
            raise RFUAVError(response.status_code, "answer is not in the {code, msg, data} envelope", body)
        if response.status_code >= 400:
            raise RFUAVError(int(body.get("code", response.status_code)), str(body.get("msg", "")), body.get("data"))
        return body.get("data")

    # -- training --------------------------------------------------------------------------
    def start_training(
        self, model: str, num_classes: int, train_path: str, val_path: str, save_path: str, **fields: Any
    ) -> dict[str, Any]:
        body = {"model": model, "num_classes": num_classes, "train_path": train_path, "val_path": val_path,
                "save_path": save_path, **_drop_none(fields)}  # fmt: skip
        return self.request("POST", "/api/v2/training/start", body)  # type: ignore[no-any-return]

    def get_training(self, task_id: str) -> dict[str, Any]:
        return self.request("GET", f"/api/v2/training/{task_id}")  # type: ignore[no-any-return]

    def stop_training(self, task_id: str) -> dict[str, Any]:
        return self.request("POST", f"/api/v2/training/{task_id}/stop")  # type: ignore[no-any-return]

    def stream_training_logs(
        self, task_id: str, last_event_id: int | None = None, **kw: Any
    ) -> Iterator[dict[str, Any]]:
        return self.stream_events(task_id, last_event_id, path=f"/api/v2/training/{task_id}/logs", **kw)

    # -- preprocessing ---------------------------------------------------------------------
    def split_dataset(
        self, input_path: str, output_path: str, train_ratio: float = 0.7, val_ratio: float = 0.2, **fields: Any
    ) -> dict[str, Any]:
        body = {"input_path": input_path, "output_path": output_path, "train_ratio": train_ratio,
                "val_ratio": val_ratio, **_drop_none(fields)}  # fmt: skip
        return self.request("POST", "/api/v2/preprocessing/split", body)  # type: ignore[no-any-return]

    def augment_dataset(self, dataset_path: str, output_path: str, methods: list[str], **fields: Any) -> dict[str, Any]:
        body = {"dataset_path": dataset_path, "output_path": output_path, "methods": methods, **_drop_none(fields)}
        return self.request("POST", "/api/v2/preprocessing/augment", body)  # type: ignore[no-any-return]

    def crop_images(
        self, input_path: str, output_path: str, x: int, y: int, width: int, height: int, **fields: Any
    ) -> dict[str, Any]:
        body = {"input_path": input_path, "output_path": output_path, "x": x, "y": y, "width": width,
                "height": height, **_drop_none(fields)}  # fmt: skip
        return self.request("POST", "/api/v2/preprocessing/crop", body)  # type: ignore[no-any-return]

    def get_preprocessing(self, task_id: str) -> dict[str, Any]:
        return self.request("GET", f"/api/v2/preprocessing/{task_id}")  # type: ignore[no-any-return]

    # -- inference -------------------------------------------------------------------------
    def start_inference(self, cfg_path: str, weight_path: str, source_path: str, **fields: Any) -> dict[str, Any]:
        body = {"cfg_path": cfg_path, "weight_path": weight_path, "source_path": source_path, **_drop_none(fields)}
        return self.request("POST", "/api/v2/inference/start", body)  # type: ignore[no-any-return]

    def start_batch_inference(
        self, cfg_path: str, weight_path: str, source_paths: list[str], **fields: Any
    ) -> dict[str, Any]:
        body = {"cfg_path": cfg_path, "weight_path": weight_path, "source_paths": source_paths, **_drop_none(fields)}
        return self.request("POST", "/api/v2/inference/batch", body)  # type: ignore[no-any-return]

    def get_inference(self, task_id: str) -> dict[str, Any]:
        return self.request("GET", f"/api/v2/inference/{task_id}")  # type: ignore[no-any-return]

    # -- diagnostic (addition) -------------------------------------------------------------
    def start_diagnostic(self, **fields: Any) -> dict[str, Any]:
        return self.request("POST", "/api/v2/diagnostic/start", _drop_none(fields))  # type: ignore[no-any-return]

    # -- tasks -----------------------------------------------------------------------------
    def get_task(self, task_id: str) -> dict[str, Any]:
        return self.request("GET", f"/api/v2/tasks/{task_id}")  # type: ignore[no-any-return]

    def get_all_tasks(
        self,
        status: str | None = None,
        task_type: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """One page of tasks, newest first (the service's default page size unless ``limit``);
        its ``next_cursor``, passed as ``cursor``, gives the next page (None: the last one)."""
        params = _drop_none({"status": status, "task_type": task_type, "limit": limit, "cursor": cursor})
        return self.request("GET", "/api/v2/tasks", params=params or None)  # type: ignore[no-any-return]

    def iter_tasks(
        self, status: str | None = None, task_type: str | None = None, limit: int = 1000
    ) -> Iterator[dict[str, Any]]:
        """Every matching task, newest first, page by page."""
        cursor: str | None = None
        while True:
            page = self.get_all_tasks(status, task_type, limit, cursor)
            tasks = [t for key, value in page.items() if key.endswith("_tasks") for t in value]
            yield from sorted(tasks, key=lambda t: t["created_at"], reverse=True)
            cursor = page.get("next_cursor")
            if cursor is None:
                return

    def cancel_task(self, task_id: str) -> dict[str, Any]:
        return self.request("POST", f"/api/v2/tasks/{task_id}/cancel")  # type: ignore[no-any-return]

    def delete_task(self, task_id: str) -> dict[str, Any]:
        return self.request("DELETE", f"/api/v2/tasks/{task_id}")  # type: ignore[no-any-return]

    def get_logs(self, task_id: str, after: int = 0) -> list[dict[str, Any]]:
        return self.request("GET", f"/api/v2/tasks/{task_id}/logs", params={"after": after} if after else None)  # type: ignore[no-any-return]

    def wait_for(
        self, task_id: str, timeout: float = 300.0, predicate: Callable[[dict[str, Any]], bool] | None = None
    ) -> dict[str, Any]:
        """Follow the task's event stream until ``predicate(task)`` (default: a final status)."""
        done = predicate or (lambda t: t["status"] in FINAL_STATUSES)
        deadline = time.monotonic() + timeout
        task = self.get_task(task_id)
        if done(task):
            return task
        for _event in self.stream_events(task_id, deadline=deadline):
            task = self.get_task(task_id)
            if done(task):
                return task
        # The final event may be published a moment before the task record shows the end
        # (the runner reports first, the supervisor reaps it after): ask again briefly.
        while True:
            task = self.get_task(task_id)
            if done(task):
                return task
            if time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        raise TimeoutError(f"task {task_id}: condition not met within {timeout} s (status {task['status']})")

    def stream_events(
        self,
        task_id: str,
        last_event_id: int | None = None,
        *,
        path: str | None = None,
        deadline: float | None = None,
        reconnect: bool = True,
        retries: int = 20,
    ) -> Iterator[dict[str, Any]]:
        """The task's events, resuming with ``Last-Event-ID`` after a dropped connection.

        Ends after the final status event (or when the server ends the stream of an ended
        task). ``retries`` bounds consecutive failed reconnects; ``deadline`` (monotonic)
        bounds the whole stream.
        """
        stream = _Stream(path or f"/api/v2/tasks/{task_id}/events", last_event_id or 0, deadline)
        while not stream.done:
            remaining = stream.remaining()
            if remaining is not None and remaining <= 0:
                return
            try:
                yield from self._connect(stream, remaining)
            except (httpx.TransportError, SSEError, RFUAVError) as exc:
                if isinstance(exc, RFUAVError) and exc.code != 503:
                    raise
                stream.failures += 1
                if not reconnect or stream.failures > retries:
                    raise RFUAVError(0, f"event stream of {task_id} lost: {exc}") from None
                time.sleep(min(2.0, 0.05 * 2**stream.failures))  # back off before resuming
                continue
            if stream.done:
                return
            # A clean end without a final event: the task ended (final seen via the store) or
            # this client was dropped for falling behind. Ask which.
            task = self.get_task(task_id)
            if task["status"] in FINAL_STATUSES and int(task.get("last_seq") or 0) <= stream.last:
                return
            if not reconnect:
                return

    def _connect(self, stream: _Stream, remaining: float | None) -> Iterator[dict[str, Any]]:
        """One connection of ``stream`` (reading for at most ``remaining`` seconds): the events
        after ``stream.last``, until the final one (``stream.done``) or until the server closes
        the stream. Raises ``RFUAVError`` for an error answer, httpx's and httpx-sse's errors
        for a broken connection."""
        headers = {"Last-Event-ID": str(stream.last)} if stream.last else {}
        timeout = httpx.Timeout(self._http.timeout.connect, read=remaining if remaining else 120.0)
        with connect_sse(self._http, "GET", stream.url, headers=headers, timeout=timeout) as source:
            if source.response.status_code == 204:
                stream.done = True  # resumed after the final event: the stream has ended
                return
            if source.response.status_code != 200:
                source.response.read()
                self._raise_for(source.response)
            stream.failures = 0
            for sse in source.iter_sse():
                if not sse.data:
                    continue
                event = orjson.loads(sse.data)
                if sse.id:
                    seq = int(sse.id)
                    if seq <= stream.last:
                        continue
                    stream.last = seq
                yield event
                if is_final(event):
                    stream.done = True
                    return

    def _raise_for(self, response: httpx.Response) -> None:
        try:
            body = response.json()
            raise RFUAVError(int(body.get("code", response.status_code)), str(body.get("msg", "")), body.get("data"))
        except ValueError:
            raise RFUAVError(response.status_code, response.text[:200]) from None

    # -- resources -------------------------------------------------------------------------
    def get_gpu_info(self) -> dict[str, Any]:
        return self.request("GET", "/api/v2/resources/gpu")  # type: ignore[no-any-return]

    def get_resources(self) -> dict[str, Any]:
        return self.request("GET", "/api/v2/resources")  # type: ignore[no-any-return]

    def set_limits(self, max_concurrent: dict[str, dict[str, int]]) -> dict[str, Any]:
        return self.request("POST", "/api/v2/resources/config", {"max_concurrent": max_concurrent})  # type: ignore[no-any-return]

    def runners(self) -> dict[str, Any]:
        return self.request("GET", "/api/v2/runners")  # type: ignore[no-any-return]

    def health(self) -> dict[str, Any]:
        return self.request("GET", "/api/v1/health")  # type: ignore[no-any-return]

    def info(self) -> dict[str, Any]:
        return self.request("GET", "/api/v1/info")  # type: ignore[no-any-return]
