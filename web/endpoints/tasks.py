"""Tasks after submission: one task's record, cancel/stop, delete, the paged list, the stored log.

A task's record and the list are answered from the process's read view (``web.view``) when it
can; otherwise, and for everything else, the supervisor answers.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from protocol import commands as cmd
from protocol.events import sse_view
from protocol.replies import CommandError
from web.endpoints.request import State, call, int_query, parse_int, state, task_id
from web.errors import envelope, envelope_bytes

#: ``GET /api/v2/tasks``: tasks per page by default, and at most.
LIST_PAGE = 100
LIST_PAGE_MAX = 1000
#: ``GET /api/v2/tasks/{id}/logs``: events by default, and per ``logs`` command.
LOGS_DEFAULT = 100_000
_LOGS_PAGE = 5000


# -- one task -----------------------------------------------------------------------------------
async def _get(request: Request[State], task_type: str | None) -> Response:
    """The task's record; 404 for an unknown id or (``task_type`` given) a task of another type."""
    tid = task_id(request)
    view = state(request)["view"]
    if view is None:
        return envelope((await call(request, cmd.Get(task_id=tid, task_type=task_type)))["task"])
    held = view.encoded(tid, task_type, envelope_bytes)
    if held is not None:
        return Response(held, media_type="application/json")
    data = await call(request, cmd.Get(task_id=tid, task_type=task_type, record=True))
    view.remember(data["record"])
    return envelope(data["task"])


async def get_training(request: Request[State]) -> Response:
    return await _get(request, "training")


async def get_inference(request: Request[State]) -> Response:
    return await _get(request, "inference")


async def get_preprocessing(request: Request[State]) -> Response:
    return await _get(request, "preprocessing")


async def get_task(request: Request[State]) -> Response:
    return await _get(request, None)


async def _cancel(request: Request[State], task_type: str | None, *, action: str, done: str) -> Response:
    """Cancel a live task: ``done`` when it ended at once (it was pending), else ``action``
    requested; 409 with the action envelope when it had already ended."""
    tid = task_id(request)
    try:
        data = await call(request, cmd.Cancel(task_id=tid, task_type=task_type))
    except CommandError as exc:
        if exc.code != "conflict":
            raise
        return envelope({"status": "error", "message": exc.message, "task_id": tid}, 409, exc.message)
    task = data["task"]
    if task["status"] == "cancelled":
        message = f"task {tid} {done}"
    else:
        message = f"{action} requested: the task stops at its next safe point and ends cancelled"
    return envelope({"status": "success", "message": message, "task_id": tid, "task": task})


async def stop_training(request: Request[State]) -> Response:
    return await _cancel(request, "training", action="stop", done="stopped")


async def cancel_task(request: Request[State]) -> Response:
    return await _cancel(request, None, action="cancel", done="cancelled")


async def delete_task(request: Request[State]) -> Response:
    tid = task_id(request)
    await call(request, cmd.Delete(task_id=tid))
    return envelope({"status": "success", "message": f"task {tid} deleted", "task_id": tid})


# -- many tasks ---------------------------------------------------------------------------------
async def list_tasks(request: Request[State]) -> Response:
    """One page of tasks, newest first, grouped by type as ``<type>_tasks``; ``total_<type>``
    counts every matching task, ``next_cursor`` (a string; null on the last page) pages on."""
    status = request.query_params.get("status") or None
    task_type = request.query_params.get("task_type") or None
    limit = int_query(request, "limit", LIST_PAGE, minimum=1, maximum=LIST_PAGE_MAX)
    raw_cursor = request.query_params.get("cursor")
    cursor = parse_int(raw_cursor, "cursor") if raw_cursor else None
    view = state(request)["view"]
    data = view.list(task_type, status, limit, cursor) if view is not None else None
    if data is None:
        data = await call(request, cmd.List(task_type=task_type, status=status, limit=limit, cursor=cursor))
    groups: dict[str, list[dict[str, Any]]] = {t: [] for t in data["totals"]}
    for task in data["tasks"]:
        groups.setdefault(task["task_type"], []).append(task)
    out: dict[str, Any] = {}
    for task_type_name, tasks in groups.items():
        out[f"{task_type_name}_tasks"] = tasks
        # Every matching task, not only this page's (the seed's meaning of total_*).
        out[f"total_{task_type_name}"] = data["totals"].get(task_type_name, len(tasks))
    nxt = data["next_cursor"]
    out["next_cursor"] = None if nxt is None else str(nxt)
    out["limit"] = limit
    return envelope(out)


async def task_logs(request: Request[State]) -> Response:
    """The stored events as a JSON array (``?after=`` and ``?limit=`` page it)."""
    tid = task_id(request)
    after = int_query(request, "after", 0)
    limit = int_query(request, "limit", LOGS_DEFAULT, minimum=1)
    events: list[Any] = []
    while len(events) < limit:
        page = await call(request, cmd.Logs(task_id=tid, after=after, limit=min(_LOGS_PAGE, limit - len(events))))
        got = page["events"]
        events += got
        after += len(got)
        if not got or after >= int(page.get("last_seq", 0)):
            break
    return envelope([sse_view(e) for e in events])
