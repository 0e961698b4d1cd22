"""The SSE event streams of a task (API.md §8): stored events after ``Last-Event-ID``, then live.

``web.sse`` streams; these endpoints parse where to resume, check the task (404 before any byte
of the stream) and answer 204 to a reconnect after the stream's end.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp

from protocol import commands as cmd
from web.endpoints.request import INTEGER, State, bad_request, parse_int, state, task_id
from web.sse import EventStream, open_stream


def last_event_id(request: Request[State]) -> int:
    """The seq to resume after: the ``Last-Event-ID`` header, else ``?last_event_id=``; 0 when
    neither is given or the header is empty (an EventSource whose last event id was reset).
    A malformed one of either is a 400, even when the other one is good."""
    header = request.headers.get("last-event-id", "").strip(" \t")
    query = request.query_params.get("last_event_id")
    given = _seq("last_event_id", query) if query is not None else 0
    return _seq("Last-Event-ID", header) if header else given


def _seq(field: str, raw: str) -> int:
    if not INTEGER.fullmatch(raw) or raw.startswith("-"):
        raise bad_request([{"field": field, "error": "must be a non-negative integer (an event's seq)"}])
    return parse_int(raw, field)


async def _stream(request: Request[State], task_type: str | None) -> ASGIApp:
    """The stream of the request's task; ``task_type`` given, a task of another type is a 404."""
    st = state(request)
    tid = task_id(request)
    after = last_event_id(request)
    control, hub, settings = st["control"], st["hub"], st["settings"]

    async def check() -> Any:
        return await control.call(cmd.Get(task_id=tid, task_type=task_type))

    sub, first = await open_stream(
        tid, after, control, lambda t: hub.subscribe(t, settings.sse_queue), check if task_type else None
    )
    if after and first.get("final") and after >= int(first.get("last_seq", 0)):
        # A reconnect after the stream's end (a browser's EventSource does this by itself, every
        # few seconds, forever): 204 is the HTML standard's signal to stop reconnecting.
        hub.unsubscribe(sub)
        return Response(status_code=204, headers={"Cache-Control": "no-store"})
    return EventStream(tid, after, first, sub, control, settings.sse_heartbeat)


async def training_logs(request: Request[State]) -> ASGIApp:
    return await _stream(request, "training")


async def preprocessing_logs(request: Request[State]) -> ASGIApp:
    return await _stream(request, "preprocessing")


async def task_events(request: Request[State]) -> ASGIApp:
    return await _stream(request, None)
