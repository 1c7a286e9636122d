"""Operations: ``/health`` (the process answers), ``/ready`` (the default model is loaded and warmed),
``/metrics`` (Prometheus) and ``GET /v1/models``."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from ..context import ServerContext
from ..errors import error_responses
from ..limits import check_api_key

router = APIRouter()
_STARTED = time.time()


@router.get("/health", tags=["operations"])
async def health(request: Request) -> JSONResponse:
    ctx: ServerContext = request.app.state.ctx
    engines = {alias: rt.healthy for alias, rt in list(ctx.registry.loaded.items())}
    status = "shutting_down" if ctx.shutting_down else "ok"
    # A failed GPU engine does not make the process unhealthy: the CPU engine answers; /health says which.
    return JSONResponse({"status": status, "engines_healthy": engines})


@router.get("/ready", tags=["operations"], responses=error_responses(503))
async def ready(request: Request) -> JSONResponse:
    ctx: ServerContext = request.app.state.ctx
    default = ctx.registry.loaded.get(ctx.settings.default_model)
    ok = (
        ctx.ready
        and not ctx.shutting_down
        and (default is not None and default.warm or not ctx.settings.preload)
    )
    body = {"ready": ok, "models_loaded": sorted(ctx.registry.loaded)}
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/metrics", tags=["operations"])
async def metrics(request: Request) -> Response:
    ctx: ServerContext = request.app.state.ctx
    return Response(ctx.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.get(
    "/v1/models", tags=["models"], dependencies=[Depends(check_api_key)], responses=error_responses(401)
)
async def models(request: Request) -> JSONResponse:
    """The configured model aliases (OpenAI's list shape); loaded ones say so."""
    ctx: ServerContext = request.app.state.ctx
    data = [
        {
            "id": alias,
            "object": "model",
            "created": int(_STARTED),
            "owned_by": "voxserve",
            "loaded": alias in ctx.registry.loaded,
            "default": alias == ctx.settings.default_model,
        }
        for alias in ctx.settings.models
    ]
    return JSONResponse({"object": "list", "data": data})
