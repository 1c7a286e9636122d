"""The application factory: ``create_app(settings)`` wires the server's parts together under one lifespan.

Start-up loads (and warms) the default model unless ``preload`` is off, then resumes unfinished jobs; shutdown
(after uvicorn has let in-flight requests finish on SIGTERM) stops the job workers after their current piece
and closes every engine. Routers stay thin; everything they share hangs off ``app.state.ctx``
(:class:`~voxserve.server.context.ServerContext`). Other routers mount through ``routers=`` or, for the
realtime WebSocket, through ``voxserve.server.realtime.realtime_router(ctx)`` when that module exists.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, nullcontext

from fastapi import APIRouter, FastAPI

from ..heap import frozen_heap
from .context import ModelLoader, ServerContext
from .errors import install_error_handlers
from .limits import BodyLimitMiddleware
from .metrics import RequestMetricsMiddleware
from .settings import ServerSettings

log = logging.getLogger("voxserve.server")


def create_app(
    settings: ServerSettings | None = None,
    *,
    routers: Sequence[APIRouter | Callable[[ServerContext], APIRouter]] = (),
    loader: ModelLoader | None = None,
    freeze_heap: bool = False,
    realtime: Callable[[ServerContext], APIRouter] | None = None,
) -> FastAPI:
    """The voxserve application.

    ``routers`` are mounted as given (an APIRouter, or a callable taking the context and returning one);
    ``loader`` replaces how a model source becomes a WhisperModel (tests inject faults or tiny models);
    ``freeze_heap``: once started, keep the objects alive then out of the cyclic collector while serving
    (voxserve/heap.py; ``voxserve serve`` sets it, an embedding process may not want it); ``realtime`` replaces
    the realtime router's factory (the stream bench's server transport sets its live options and oracle VAD).
    """
    settings = settings or ServerSettings()
    ctx = ServerContext.build(settings, loader=loader)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await ctx.start()
        try:
            with frozen_heap() if freeze_heap else nullcontext():
                yield
        finally:
            await ctx.stop()

    app = FastAPI(
        title="voxserve",
        summary="Whisper-family speech recognition: OpenAI's audio API on a continuous-batching engine",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.ctx = ctx
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_upload_bytes, metrics=ctx.metrics)
    app.add_middleware(RequestMetricsMiddleware, metrics=ctx.metrics)  # outermost: sees the 413s too

    from .routes import audio, jobs, ops

    app.include_router(ops.router)
    app.include_router(audio.router)
    app.include_router(jobs.router)
    for r in (*([realtime] if realtime is not None else _optional_routers()), *routers):
        app.include_router(r if isinstance(r, APIRouter) else r(ctx))
    return app


def _optional_routers() -> list[Callable[[ServerContext], APIRouter]]:
    """The realtime WebSocket router, when its module is part of this installation."""
    if importlib.util.find_spec(f"{__package__}.realtime") is None:
        return []
    from . import realtime

    factory = getattr(realtime, "realtime_router", None)
    return [factory] if factory is not None else []
