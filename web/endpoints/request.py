"""What every endpoint reads: the lifespan's ``State``, the JSON body, query integers, the task id.

Each reader answers a bad input with a 400 (``ApiError``) that names the field, in the envelope's
``data.errors`` as ``[{field, error}]``, and never echoes a value it refused.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any, TypedDict, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from protocol import commands as cmd
from protocol.settings import Settings
from web.control import ControlClient
from web.errors import ApiError
from web.hub import Hub
from web.metrics import Metrics
from web.paths import Confinement, PathRefused
from web.validation import path_error, validation_errors
from web.view import View

ModelT = TypeVar("ModelT", bound=BaseModel)
#: The largest integer a query parameter or header may carry: JavaScript's largest exact integer
#: (seq numbers and counts never come near it; SQLite would overflow past 2**63 - 1).
MAX_INT = 2**53
#: ASCII digits only: ``str.isdigit`` and ``int()`` also take other scripts' digits, ``_`` and spaces.
INTEGER = re.compile(r"-?[0-9]{1,20}")


class State(TypedDict):
    """What the app's lifespan opens once and every request reads (``request.state``)."""

    settings: Settings
    control: ControlClient
    hub: Hub
    #: The read view of task records (None: ``RFUAV_WEB_VIEW_TASKS=0``, every read asks).
    view: View | None
    paths: Confinement
    metrics: Metrics


Endpoint = Callable[[Request[State]], Awaitable[Response]]


def state(request: Request[State]) -> State:
    return request.state


async def call(request: Request[State], command: cmd.Command) -> dict[str, Any]:
    """The supervisor's answer to ``command`` (``CommandError`` and ``Unavailable`` propagate to
    the envelope's handlers)."""
    return await state(request)["control"].call(command)


def task_id(request: Request[State]) -> str:
    return str(request.path_params["task_id"])


# -- the body ---------------------------------------------------------------------------------
async def read_json(request: Request[State]) -> dict[str, Any]:
    """The body as a JSON object: 400 for a wrong Content-Type or bad JSON, 413 past the limit
    (by Content-Length and by the bytes actually received)."""
    limit = state(request)["settings"].max_body_bytes
    ctype = request.headers.get("content-type", "")
    mime = ctype.split(";", 1)[0].strip().lower()
    if mime != "application/json" and not (mime.startswith("application/") and mime.endswith("+json")):
        shown = f"'{ctype[:100]}'" if ctype else "missing"
        raise ApiError(400, f"Content-Type must be application/json (got {shown})")
    length = request.headers.get("content-length")
    if length is not None:
        if not INTEGER.fullmatch(length.strip()) or length.strip().startswith("-"):
            raise ApiError(400, "Content-Length is not a number")
        declared = int(length)
        if declared > limit:
            raise ApiError(413, f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    if not body.strip():
        raise ApiError(400, "request body is empty: a JSON object is required")
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ApiError(400, f"request body must be a JSON object, got {type(obj).__name__}")
    return obj


async def validate(request: Request[State], model: type[ModelT]) -> ModelT:
    """The body as a ``model`` under the service's settings (``web.fields.settings_of``): 400
    naming every offending field."""
    obj = await read_json(request)
    try:
        return model.model_validate(obj, context=state(request)["settings"])
    except ValidationError as exc:
        raise bad_request(validation_errors(exc)) from None


def bad_request(errors: list[dict[str, str]]) -> ApiError:
    msg = "; ".join(f"{e['field']}: {e['error']}" for e in errors[:10])
    return ApiError(400, msg or "invalid request", {"errors": errors})


def confined(request: Request[State], build_params: Callable[[Confinement], Any]) -> Any:
    """``build_params(paths)``, a request's params with its paths confined to the data roots;
    a refused path is a 400 naming its field."""
    try:
        return build_params(state(request)["paths"])
    except PathRefused as exc:
        raise bad_request([path_error(exc)]) from None


# -- integers in the query and headers --------------------------------------------------------
def parse_int(raw: str, field: str, minimum: int = 0, maximum: int = MAX_INT) -> int:
    """``raw`` as an integer in [minimum, maximum]; anything else is a 400 naming ``field``."""
    if not INTEGER.fullmatch(raw):
        raise bad_request([{"field": field, "error": "must be an integer (ASCII digits)"}])
    value = int(raw)
    if value < minimum:
        raise bad_request([{"field": field, "error": f"must be >= {minimum}"}])
    if value > maximum:
        raise bad_request([{"field": field, "error": f"must be <= {maximum}"}])
    return value


def int_query(request: Request[State], name: str, default: int, minimum: int = 0, maximum: int = MAX_INT) -> int:
    """The integer query parameter ``name``; ``default`` when absent (``?name=`` is a 400)."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    return parse_int(raw, name, minimum, maximum)
