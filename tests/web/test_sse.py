"""SSE log streams over real HTTP: replay, live tail, resume by Last-Event-ID (and 204 once a
stream has ended), bad Last-Event-IDs, a browser's own EventSource, fan-out to 200 clients, a
slow client dropped and resumed losslessly, streams released on disconnect."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from httpx_sse import aconnect_sse, connect_sse
from prometheus_client.parser import text_string_to_metric_families

from tests.support.service import Service

FINAL = ("completed", "failed", "cancelled")
CHROMIUM = "/usr/bin/chromium"


def wait_until(svc: Service, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Check ``predicate`` (a question to the service) until it is truthy; fail the test after
    ``timeout`` seconds. Between two checks the wait is on the web process: should it die, the
    test fails at once with its log rather than at the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout} s (last: {value!r})")
        assert svc.web is not None
        try:
            code = svc.web.wait(0.05)
        except subprocess.TimeoutExpired:
            continue
        pytest.fail(f"{what}: web exited with {code}:\n{svc.web_log_text()[-5000:]}")


def http_requests(svc: Service, endpoint: str, status: int) -> float:
    """How many requests ``endpoint`` (a route's function name) answered with ``status``."""
    text = httpx.get(svc.url("/metrics"), timeout=10).text
    for family in text_string_to_metric_families(text):
        if family.name == "rfuav_http_request_duration_seconds":
            for sample in family.samples:
                labels = sample.labels
                if (
                    sample.name.endswith("_count")
                    and labels.get("endpoint") == endpoint
                    and labels.get("status") == str(status)
                ):
                    return sample.value
    return 0.0


def stream(
    base_url: str, path: str, headers: dict[str, str] | None = None, limit: int | None = None
) -> list[dict[str, Any]]:
    """Events of one SSE stream (``seq`` from the ``id:`` line checked against the data)."""
    out: list[dict[str, Any]] = []
    with (
        httpx.Client(base_url=base_url, timeout=60) as http,
        connect_sse(http, "GET", path, headers=headers or {}) as source,
    ):
        assert source.response.status_code == 200
        for sse in source.iter_sse():
            event = orjson.loads(sse.data)
            assert int(sse.id) == event["seq"]
            out.append(event)
            if limit is not None and len(out) >= limit:
                break
    return out


def seqs(events: list[dict[str, Any]]) -> list[int]:
    return [e["seq"] for e in events]


def active_streams(svc: Service) -> int:
    return int(httpx.get(svc.url("/api/v1/health"), timeout=10).json()["data"]["active_log_streams"])


@pytest.mark.timeout(120)
def test_replay_of_an_ended_task_then_the_stream_ends(api: Service) -> None:
    task = api.client.start_diagnostic(events=30)
    api.client.wait_for(task["task_id"], timeout=60)
    stored = api.client.get_logs(task["task_id"])
    with (
        httpx.Client(base_url=api.base_url, timeout=30) as http,
        http.stream("GET", f"/api/v2/tasks/{task['task_id']}/events") as r,
    ):
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["cache-control"] == "no-store" and r.headers["x-accel-buffering"] == "no"
        text = r.read().decode()
    frames = [f for f in text.split("\n\n") if f]
    assert all(f.startswith("id: ") and "\ndata: {" in f for f in frames)
    events = [orjson.loads(f.split("\ndata: ", 1)[1]) for f in frames]
    assert events == [{k: v for k, v in e.items() if k != "rseq"} for e in stored]
    assert seqs(events) == list(range(1, len(events) + 1))
    assert events[-1]["kind"] == "status" and events[-1]["status"] == "completed"
    assert all({"timestamp", "level", "message"} <= set(e) for e in events)
    sent = re.search(r"^rfuav_sse_events_sent_total (\S+)$", httpx.get(api.url("/metrics")).text, re.MULTILINE)
    assert sent is not None and float(sent.group(1)) >= len(events)


@pytest.mark.timeout(120)
def test_live_tail_has_no_gap_and_no_duplicate(api: Service) -> None:
    task = api.client.start_diagnostic(events=300, rate=300)
    events = stream(api.base_url, f"/api/v2/tasks/{task['task_id']}/events")
    assert seqs(events) == list(range(1, len(events) + 1))
    assert [e["message"] for e in events if e["message"].startswith("event ")] == [
        f"event {i}/300" for i in range(1, 301)
    ]
    assert events[-1]["status"] == "completed"


@pytest.mark.timeout(120)
def test_resume_after_last_event_id(api: Service) -> None:
    task = api.client.start_diagnostic(events=200, rate=200)
    path = f"/api/v2/tasks/{task['task_id']}/events"
    first = stream(api.base_url, path, limit=25)  # disconnects mid-stream, the task still running
    assert seqs(first) == list(range(1, 26))
    rest = stream(api.base_url, path, headers={"Last-Event-ID": "25"})
    assert seqs(first + rest) == list(range(1, len(first) + len(rest) + 1))
    assert rest[-1]["status"] == "completed"
    # The query parameter does the same; resuming after the last event gives nothing and ends.
    assert seqs(stream(api.base_url, path + "?last_event_id=100")) == seqs(rest)[75:]
    # The client resumes by itself and never repeats an event.
    assert seqs(list(api.client.stream_events(task["task_id"], last_event_id=150))) == seqs(rest)[125:]
    # Resuming at or beyond the end of an ended task's stream: 204 No Content, the HTML standard's
    # "stop reconnecting" (on every stream route; the client takes it as the end).
    last = rest[-1]["seq"]
    before = http_requests(api, "task_events", 204)
    with httpx.Client(base_url=api.base_url, timeout=30) as http:
        for headers, query in (({"Last-Event-ID": str(last)}, ""), ({}, f"?last_event_id={last}"),
                               ({"Last-Event-ID": str(last + 1000)}, "")):  # fmt: skip
            r = http.get(path + query, headers=headers)
            assert r.status_code == 204 and r.content == b"", (headers, query, r.status_code, r.text[:200])
        # Anything short of the end still streams what is left.
        assert http.get(path, headers={"Last-Event-ID": str(last - 1)}).status_code == 200
    assert http_requests(api, "task_events", 204) == before + 3
    assert list(api.client.stream_events(task["task_id"], last_event_id=last)) == []
    assert active_streams(api) == 0  # a 204 holds no subscription


@pytest.mark.timeout(60)
def test_typed_streams_and_errors(api: Service) -> None:
    diag = api.client.start_diagnostic(events=1)
    with httpx.Client(base_url=api.base_url, timeout=30) as http:
        for path in (f"/api/v2/training/{diag['task_id']}/logs", f"/api/v2/preprocessing/{diag['task_id']}/logs",
                     "/api/v2/tasks/nope/events", "/api/v2/training/nope/logs"):  # fmt: skip
            r = http.get(path)
            assert r.status_code == 404 and r.json()["code"] == 404, r.text
    # A pending training task (CPU training limit 0): its stream follows it until it is stopped.
    data = api.home / "sse-data"
    for split in ("train", "val"):
        (data / split / "a").mkdir(parents=True, exist_ok=True)
    task = api.client.start_training(model="resnet18", num_classes=1, train_path="sse-data/train",
                                     val_path="sse-data/val", save_path="sse-out", device="cpu")  # fmt: skip
    got: list[dict[str, Any]] = []
    for event in api.client.stream_training_logs(task["task_id"]):
        got.append(event)
        if len(got) == 1:
            api.client.stop_training(task["task_id"])
    assert got[-1]["kind"] == "status" and got[-1]["status"] == "cancelled"
    assert seqs(got) == list(range(1, len(got) + 1))


BAD_EVENT_IDS = [
    "abc", "-1", "1.5", "0x10", "1_000", "1e3", "+1", "²", "١٢", "９", str(2**53 + 1), str(2**63), str(2**64), "9" * 40,
]  # fmt: skip
STREAM_ROUTES = ["/api/v2/training/{id}/logs", "/api/v2/preprocessing/{id}/logs", "/api/v2/tasks/{id}/events"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("route", STREAM_ROUTES)
def test_a_bad_last_event_id_is_a_400_naming_it(api: Service, route: str) -> None:
    # Validation comes before the lookup: any id (here an unknown one) shows it.
    path = route.format(id="no-such-task")
    with httpx.Client(base_url=api.base_url, timeout=30) as http:
        for bad in BAD_EVENT_IDS:
            raw = bad.encode()  # as the bytes a client sends (UTF-8 for '²')
            r = http.get(path, headers={"Last-Event-ID": raw})
            body = r.json()
            assert r.status_code == 400 and body["code"] == 400, (bad, r.status_code, r.text[:300])
            assert body["data"]["errors"][0]["field"] == "Last-Event-ID" and "Last-Event-ID" in body["msg"], (bad, body)
            r = http.get(path, params={"last_event_id": bad})
            body = r.json()
            assert r.status_code == 400, (bad, r.status_code, r.text[:300])
            assert body["data"]["errors"][0]["field"] == "last_event_id" and "last_event_id" in body["msg"], (bad, body)
        # The header wins over the query, but a malformed query is refused all the same (the
        # document says what a query must be); a good id passes validation (then: unknown task).
        assert http.get(path, headers={"Last-Event-ID": "3"}, params={"last_event_id": "²"}).status_code == 400
        assert http.get(path, headers={"Last-Event-ID": "3"}, params={"last_event_id": "7"}).status_code == 404
        assert http.get(path + "?last_event_id=%C2%B2").status_code == 400
        assert http.get(path + "?last_event_id=").status_code == 400  # given, and not a number
        assert http.get(path, headers={"Last-Event-ID": ""}).status_code == 404  # empty: from the start
        assert http.get(path, headers={"Last-Event-ID": str(2**53)}).status_code == 404
    health = httpx.get(api.url("/api/v1/health"), timeout=10)
    assert health.status_code == 200 and health.json()["data"]["active_log_streams"] == 0


_EVENT_SOURCE_PAGE = "<!doctype html><title>EventSource</title>"
_OPEN_EVENT_SOURCE = """url => {
  window.seen = { opens: 0, errors: 0, messages: [] };
  const source = new EventSource(url);
  window.source = source;
  source.onopen = () => { window.seen.opens += 1; };
  source.onerror = () => { window.seen.errors += 1; };
  source.onmessage = (ev) => { window.seen.messages.push([ev.lastEventId, JSON.parse(ev.data)]); };
}"""


@pytest.mark.timeout(120)
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is absent: run `make browser` (apt chromium)")
def test_a_browsers_own_event_source_gets_every_event_once_then_stops(api: Service) -> None:
    """Chromium's native EventSource reconnects by itself after a stream ends (every ~3 s, for
    ever) unless that reconnect is answered 204: then it closes for good."""
    from playwright.sync_api import sync_playwright

    task = api.client.start_diagnostic(events=20, rate=20)
    path = f"/api/v2/tasks/{task['task_id']}/events"
    before = http_requests(api, "task_events", 204)
    requests: list[Any] = []  # what the page asked for the stream
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            # A blank page of the service's own origin (no CORS), served by the browser itself.
            page.route(
                api.url("/event-source-test"),
                lambda route: route.fulfill(content_type="text/html", body=_EVENT_SOURCE_PAGE),
            )
            page.on("request", lambda req: requests.append(req) if req.url == api.url(path) else None)
            page.goto(api.url("/event-source-test"))
            page.evaluate(_OPEN_EVENT_SOURCE, path)
            page.wait_for_function("window.source.readyState === EventSource.CLOSED", timeout=30_000)
            seen = page.evaluate("window.seen")
            answers = [req.response().status for req in requests]
        finally:
            browser.close()
    stored = api.client.get_logs(task["task_id"])
    # Every event, once, in order (compared by what JavaScript holds exactly: not sent_ns's digits).
    shown = [(e["seq"], e["kind"], e["message"], e.get("status")) for _, e in seen["messages"]]
    assert shown == [(e["seq"], e["kind"], e["message"], e.get("status")) for e in stored]
    assert [int(i) for i, _ in seen["messages"]] == seqs(stored) == list(range(1, len(stored) + 1))
    assert stored[-1]["status"] == "completed"
    # One stream, then one reconnect answered 204 (the server answers so only to a Last-Event-ID
    # at the end of an ended task's stream), then nothing.
    assert seen["opens"] == 1 and seen["errors"] == 2, seen
    assert answers == [200, 204], answers
    wait_until(api, lambda: http_requests(api, "task_events", 204) >= before + 1, 30, "the 204 counted")
    assert http_requests(api, "task_events", 204) == before + 1
    assert active_streams(api) == 0


@pytest.mark.asyncio
@pytest.mark.timeout(240)
async def test_200_concurrent_clients_each_get_every_event(api: Service) -> None:
    clients = 200
    # The task waits in the queue until every client is connected: then all 200 streams are
    # open at once, and each must get every event of the live run.
    api.client.set_limits({"cpu": {"diagnostic": 0}})
    try:
        task = api.client.start_diagnostic(events=400, rate=100)
    except BaseException:
        api.client.set_limits({"cpu": {"diagnostic": 8}})
        raise
    path = f"/api/v2/tasks/{task['task_id']}/events"
    connected = 0
    all_connected = asyncio.Event()

    async def one(http: httpx.AsyncClient) -> list[int]:
        nonlocal connected
        got: list[int] = []
        async with aconnect_sse(http, "GET", path) as source:
            assert source.response.status_code == 200
            connected += 1  # the server subscribed before it answered
            if connected == clients:
                all_connected.set()
            async for sse in source.aiter_sse():
                event = orjson.loads(sse.data)
                got.append(event["seq"])
                if event.get("kind") == "status" and event.get("status") in FINAL:
                    break
        return got

    limits = httpx.Limits(max_connections=clients + 10, max_keepalive_connections=clients + 10)
    async with httpx.AsyncClient(base_url=api.base_url, timeout=120, limits=limits) as http:
        runs = [asyncio.create_task(one(http)) for _ in range(clients)]
        try:
            await asyncio.wait_for(all_connected.wait(), 120)
            health = (await http.get("/api/v1/health")).json()["data"]
            assert health["active_log_streams"] == clients  # the streams really are concurrent
        finally:
            await asyncio.to_thread(api.client.set_limits, {"cpu": {"diagnostic": 8}})
        results = await asyncio.gather(*runs)
    expected = list(range(1, results[0][-1] + 1))
    assert len(expected) > 400
    for got in results:
        assert got == expected
    await asyncio.to_thread(wait_until, api, lambda: active_streams(api) == 0, 30, "streams released")


def dropped(svc: Service) -> float:
    match = re.search(r"^rfuav_sse_dropped_total (\S+)$", httpx.get(svc.url("/metrics")).text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def _raw_get(port: int, path: str) -> socket.socket:
    """An HTTP/1.0 request on a socket with a tiny receive buffer that nobody reads yet."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
    return sock


def _dechunk(data: bytes) -> bytes:
    """The payload of a chunked body (a cut-off last chunk is kept as far as it arrived)."""
    out = []
    pos = 0
    while pos < len(data):
        end = data.find(b"\r\n", pos)
        if end < 0:
            break
        size = int(data[pos:end].split(b";")[0], 16)
        if size == 0:
            break
        out.append(data[end + 2 : end + 2 + size])
        pos = end + 2 + size + 2
    return b"".join(out)


def _read_all(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    chunks = []
    while True:
        chunk = sock.recv(1 << 16)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


@pytest.mark.parametrize("phase", ["live", "replay"])
@pytest.mark.timeout(240)
def test_slow_client_is_dropped_and_resumes_losslessly(make_service: Any, phase: str) -> None:
    """``live``: the slow client is connected before the events flow and its buffer (2,000
    events) overflows. ``replay``: it connects after the task ended and stalls while the stored
    log is written to it; it is dropped after 2 heartbeats without progress."""
    # The slow client's socket holds ~4 MB beyond its buffer: 20,000 events of 1 KB overflow it.
    svc = make_service(RFUAV_SSE_QUEUE="2000", RFUAV_SSE_HEARTBEAT="15" if phase == "live" else "0.5")
    total = 20_000
    if phase == "live":
        svc.client.set_limits({"cpu": {"diagnostic": 0}})  # hold the task until the client is in
    task = svc.client.start_diagnostic(events=total, size=1000)
    path = f"/api/v2/tasks/{task['task_id']}/events"
    if phase == "replay":
        svc.client.wait_for(task["task_id"], timeout=120)
    before = dropped(svc)
    slow = _raw_get(svc.port, path)
    try:
        if phase == "live":
            wait_until(svc, lambda: active_streams(svc) == 1, 30, "slow client subscribed")
            svc.client.set_limits({"cpu": {"diagnostic": 8}})
        # Meanwhile a fast client follows the same task to the end, unhindered (the client
        # resumes by itself should it be dropped too).
        fast = list(svc.client.stream_events(task["task_id"]))
        assert seqs(fast) == list(range(1, len(fast) + 1)) and fast[-1]["status"] == "completed"
        # The slow client cannot finish on its own: no stream left means it was cut off.
        wait_until(svc, lambda: dropped(svc) > before and active_streams(svc) == 0, 60, "slow client dropped")
        raw = _read_all(slow, 60)  # what the server managed to send before it cut the client off
    finally:
        slow.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.") and b" 200 " in head.split(b"\r\n")[0]
    if b"transfer-encoding: chunked" in head.lower():
        body = _dechunk(body)
    frames = [f for f in body.split(b"\n\n") if f.startswith(b"id: ")]
    received = [orjson.loads(f.split(b"\ndata: ", 1)[1]) for f in frames if b"\ndata: " in f]
    assert received and seqs(received) == list(range(1, len(received) + 1))
    assert received[-1]["seq"] < fast[-1]["seq"]  # really cut short
    rest = stream(svc.base_url, path, headers={"Last-Event-ID": str(received[-1]["seq"])})
    assert seqs(received + rest) == seqs(fast)
    assert [e["message"] for e in received + rest] == [e["message"] for e in fast]
    assert active_streams(svc) == 0


@pytest.mark.timeout(120)
def test_heartbeat_and_release_on_disconnect(make_service: Any) -> None:
    svc = make_service(RFUAV_SSE_HEARTBEAT="0.2")
    task = svc.client.start_diagnostic(sleep=60)
    path = f"/api/v2/tasks/{task['task_id']}/events"
    lines: list[str] = []
    with httpx.Client(base_url=svc.base_url, timeout=30) as http, http.stream("GET", path) as r:
        for line in r.iter_lines():
            lines.append(line)
            if line.startswith(": ping"):
                assert active_streams(svc) == 1
                break
    assert any(line.startswith("data: ") for line in lines)
    wait_until(svc, lambda: active_streams(svc) == 0, 30, "stream released after the client left")
    action = svc.client.cancel_task(task["task_id"])  # running: SIGTERM, then it ends cancelled
    assert action["status"] == "success" and action["message"].startswith("cancel requested"), action
    assert svc.client.wait_for(task["task_id"], timeout=60)["status"] == "cancelled"
