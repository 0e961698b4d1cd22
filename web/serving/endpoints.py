"""The serving endpoints (``contract/SERVING.md``): deployments through the supervisor,
predictions straight to a replica (``web.replicas``) with the request's raw bytes.

A prediction's body is read up to ``RFUAV_SERVING_MAX_BODY_BYTES`` (413 past it) and handed over
as is with its content type; the replica checks it (400 naming the field) and answers. Web only
wraps the answer: in the envelope for ``/api/v2/serving/{name}/predict[_batch]``, as is for the
article's ``/predict`` and ``/predict_batch`` (errors there are ``{"detail": ...}``, FastAPI's
shape). 503 answers carry ``Retry-After``.
"""

from __future__ import annotations

import time

import orjson
from starlette.requests import Request
from starlette.responses import Response

from protocol import commands as cmd
from protocol import serving as sv
from web.endpoints.request import INTEGER, State, call, confined, state, validate
from web.errors import ApiError, envelope
from web.replicas import NoReplica, Replicas, Route
from web.serving.schemas import DeployRequest, ReloadRequest

#: Seconds a client is told to wait before retrying a 503.
RETRY_AFTER = "1"
_MEDIA = {"application/json": b"application/json", "image/png": b"image/png", "image/jpeg": b"image/jpeg"}
_ENVELOPE_HEAD = b'{"code":200,"msg":"","data":'


def _name(request: Request[State]) -> str:
    name = str(request.path_params["name"])
    if not sv.NAME_RE.fullmatch(name):
        raise ApiError(404, f"deployment {name[:80]!r} not found")
    return name


def replicas(request: Request[State]) -> Replicas:
    router: Replicas = request.app.state.replicas
    return router


# -- deployments ------------------------------------------------------------------------------
async def deploy(request: Request[State]) -> Response:
    req = await validate(request, DeployRequest)
    source = confined(request, req.paths)
    data = await call(request, cmd.Deploy(**source, **req.settings()))
    return envelope(data["deployment"])


async def list_deployments(request: Request[State]) -> Response:
    return envelope(await call(request, cmd.Deployments()))


async def get_deployment(request: Request[State]) -> Response:
    data = await call(request, cmd.ShowDeployment(name=_name(request)))
    return envelope(data["deployment"])


async def undeploy(request: Request[State]) -> Response:
    data = await call(request, cmd.Undeploy(name=_name(request)))
    return envelope(data["deployment"])


async def reload(request: Request[State]) -> Response:
    name = _name(request)
    has_body = (await request.body()).strip() != b""
    source = confined(request, (await validate(request, ReloadRequest)).paths) if has_body else {}
    data = await call(request, cmd.Reload(name=name, **source))
    return envelope(data["deployment"])


# -- predictions ------------------------------------------------------------------------------
async def predict(request: Request[State]) -> Response:
    return await _predict(request, _name(request), sv.OP_PREDICT, article=False)


async def predict_batch(request: Request[State]) -> Response:
    return await _predict(request, _name(request), sv.OP_PREDICT_BATCH, article=False)


async def article_predict(request: Request[State]) -> Response:
    return await _article(request, sv.OP_ARTICLE_PREDICT)


async def article_predict_batch(request: Request[State]) -> Response:
    return await _article(request, sv.OP_ARTICLE_BATCH)


async def _article(request: Request[State], op: bytes) -> Response:
    """The article's routes: its shapes, errors as ``{"detail": ...}`` (FastAPI's)."""
    try:
        name = await _default(request)
    except ApiError as exc:
        return _detail(exc.status, exc.msg, exc.headers)
    return await _predict(request, name, op, article=True)


async def _default(request: Request[State]) -> str:
    """The deployment the article's routes use: ``RFUAV_DEFAULT_DEPLOYMENT``, or the only one."""
    configured = state(request)["settings"].default_deployment
    if configured:
        return configured
    router = replicas(request)
    if not router.known:
        await _refresh(request)
    names = sorted(router.routes)
    if len(names) == 1:
        return names[0]
    if not names:
        raise ApiError(404, "no deployment is serving: deploy a model first (POST /api/v2/serving/deploy)")
    raise ApiError(404, f"several deployments serve ({', '.join(names)}): set RFUAV_DEFAULT_DEPLOYMENT")


async def _refresh(request: Request[State]) -> None:
    data = await call(request, cmd.Routes())
    replicas(request).apply(data["routes"])


async def _route(request: Request[State], name: str) -> Route:
    router = replicas(request)
    route = router.routes.get(name)
    if route is None or not route.links:
        # Deployed a moment ago (the table is on its way) or web just started: ask.
        await _refresh(request)
        route = router.routes.get(name)
    if route is None:
        data = await call(request, cmd.ShowDeployment(name=name))  # 404 when unknown
        dep = data["deployment"]
        if dep["status"] == sv.FAILED:  # no use retrying: deploy it again
            raise ApiError(503, f"deployment {name!r} failed: {dep.get('reason', '')}")
        raise ApiError(503, f"deployment {name!r} is {dep['status']}", headers={"Retry-After": RETRY_AFTER})
    return route


async def _body(request: Request[State]) -> tuple[bytes, bytes]:
    """``(content type, body)``: 400 for another type, 413 past the limit."""
    limit = state(request)["settings"].serving_max_body_bytes
    ctype = request.headers.get("content-type", "")
    media = _MEDIA.get(ctype.split(";", 1)[0].strip().lower())
    if media is None:
        shown = f"'{ctype[:100]}'" if ctype else "missing"
        raise ApiError(400, f"Content-Type must be application/json, image/png or image/jpeg (got {shown})")
    length = request.headers.get("content-length", "").strip()
    if length and INTEGER.fullmatch(length) and int(length) > limit:
        raise ApiError(413, f"request body of {length} bytes exceeds the limit of {limit} bytes "
                            "(RFUAV_SERVING_MAX_BODY_BYTES)")  # fmt: skip
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body exceeds the limit of {limit} bytes (RFUAV_SERVING_MAX_BODY_BYTES)")
        chunks.append(chunk)
    body = b"".join(chunks)
    if not body:
        raise ApiError(400, "request body is empty")
    return media, body


async def _predict(request: Request[State], name: str, op: bytes, *, article: bool) -> Response:
    started = time.perf_counter()
    router = replicas(request)
    try:
        media, body = await _body(request)
        route = await _route(request, name)
        try:
            status, answer = await router.request(route, op, media, body)
        except NoReplica as exc:
            status, answer = 503, sv.error_body(str(exc))
    except ApiError as exc:
        _count(router, name, exc.status, started)
        if article:
            return _detail(exc.status, exc.msg, exc.headers)
        raise
    _count(router, name, status, started)
    if status == 200:
        if article:
            return Response(answer, media_type="application/json")
        return Response(_ENVELOPE_HEAD + answer + b"}", media_type="application/json")
    message = _message(answer)
    headers = {"Retry-After": RETRY_AFTER} if status == 503 else None
    if article:
        return _detail(status, message, headers)
    return envelope(None, status, message, headers=headers)


def _count(router: Replicas, name: str, status: int, started: float) -> None:
    if name in router.routes:  # never a label per made-up name
        router.answers[(name, status)] += 1
        router.observe(name, time.perf_counter() - started)


def _message(answer: bytes) -> str:
    try:
        value = orjson.loads(answer).get("message")
    except (orjson.JSONDecodeError, AttributeError):
        value = None
    return value if isinstance(value, str) else "the replica's answer was malformed"


def _detail(status: int, message: str, headers: dict[str, str] | None) -> Response:
    return Response(orjson.dumps({"detail": message}), status_code=status, media_type="application/json",
                    headers=headers)  # fmt: skip
