"""Resources: device usage and limits, GPU hardware, changing the limits, live runner processes."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from protocol import commands as cmd
from web import schemas
from web.endpoints.request import State, call, validate
from web.errors import envelope


async def resources(request: Request[State]) -> Response:
    return envelope(await call(request, cmd.Resources()))


async def gpu(request: Request[State]) -> Response:
    return envelope(await call(request, cmd.Gpu()))


async def set_limits(request: Request[State]) -> Response:
    req = await validate(request, schemas.LimitsRequest)
    data = await call(request, cmd.SetLimits(limits=req.max_concurrent))
    return envelope({"status": "success", "message": "concurrency limits updated", "current_config": data["limits"]})


async def runners(request: Request[State]) -> Response:
    return envelope(await call(request, cmd.Ps()))
