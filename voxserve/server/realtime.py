"""The realtime transcription WebSocket (``/v1/realtime?intent=transcription``, OpenAI's Realtime events) and
the live page at ``/`` (microphone or a file -> WebSocket -> live text).

The router is thin: it authenticates, enforces the stream caps and the idle timeout, parses frames, and hands
events to a :class:`~voxserve.live.session.LiveSession`. Close codes: 1008 policy (bad API key, wrong intent,
too many streams for the key, too many invalid events), 1011 server error (model not loadable), 1013 try again
later (server at its stream limit), 1000 after an idle timeout. Everything else is an ``error`` event on an
open session; nothing a client sends can take the server down.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

from fastapi import APIRouter, WebSocket
from fastapi.responses import HTMLResponse
from starlette.websockets import WebSocketDisconnect, WebSocketState

from ..live.service import LiveOptions, LiveService, LiveStats, StreamLimitError
from ..live.session import LiveSession

log = logging.getLogger("voxserve.server.realtime")
PAGE = Path(__file__).parent / "static" / "live.html"
MAX_ERRORS = 50  # invalid events in a row before the session is closed
KEY_PREFIX = "openai-insecure-api-key."  # how browsers pass a key (they cannot set headers on WebSockets)

# model name -> an async context manager holding (alias, service) for one session's life
ServiceFor = Callable[[str | None], AbstractAsyncContextManager[tuple[str, LiveService]]]


class UnknownModel(LookupError):
    pass


def realtime_router(
    source: Any,
    *,
    options: LiveOptions | None = None,
    api_keys: list[str] | None = None,
    on_session: Callable[[LiveSession, WebSocket], None] | None = None,
) -> APIRouter:
    """The router, from a ready :class:`LiveService` (tests, the stream bench) or from the server context
    (``create_app`` mounts it so; services are then made per model alias, on first use, from the registry).
    ``on_session`` sees each new session with its connection (the stream bench sets its oracle VAD there)."""
    if isinstance(source, LiveService):
        fixed = source

        @contextlib.asynccontextmanager
        async def service_for(model: str | None) -> AsyncIterator[tuple[str, LiveService]]:
            yield model or "default", fixed

        keys = list(api_keys or [])
        idle = fixed.options.idle_timeout_s
    else:
        service_for, keys, idle = _from_context(source, options, api_keys)

    router = APIRouter()

    @router.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    @router.websocket("/v1/realtime")
    async def realtime(ws: WebSocket) -> None:
        await _serve(ws, service_for, keys, idle, on_session)

    return router


def live_options(settings: Any) -> LiveOptions:
    """The live options a server's settings give: each ``realtime_<name>`` setting as LiveOptions' ``<name>``."""
    return LiveOptions(
        **{
            name: getattr(settings, f"realtime_{name}")
            for name in LiveOptions.__dataclass_fields__
            if hasattr(settings, f"realtime_{name}")
        }
    )


def _from_context(
    ctx: Any, options: LiveOptions | None, api_keys: list[str] | None
) -> tuple[ServiceFor, list, float]:
    from ..audio.vad import SileroVAD, VADError

    settings = ctx.settings
    options = options or live_options(settings)
    services: dict[str, LiveService] = ctx.extras.setdefault("live", {})
    observe = _live_metrics(ctx, services)
    vad_holder: list = []
    # Services are made one at a time: sessions that arrive while the first one's VAD loads (in a worker thread)
    # wait here, then join that service (stream caps and figures are per service).
    making = asyncio.Lock()
    # An evicted model's service goes with it (its sessions held leases, so none is open): it holds the model.
    ctx.registry.on_evict.append(lambda alias: services.pop(alias, None))

    def vad_model() -> SileroVAD | None:
        if not vad_holder:
            path = getattr(settings, "vad_model", None)
            try:
                vad_holder.append(SileroVAD(path))
            except VADError as e:
                log.warning("server VAD unavailable (%s): sessions must use turn_detection null", e)
                vad_holder.append(None)
        return vad_holder[0]

    def fail_over(alias: str, engine: Any, error: BaseException) -> bool:
        # The server's own fail-over (to a CPU engine), as its HTTP routes use it, on the alias's runtime now.
        runtime = ctx.registry.loaded.get(alias)
        return runtime is not None and runtime.fail_over(engine, error)

    @contextlib.asynccontextmanager
    async def service_for(model: str | None) -> AsyncIterator[tuple[str, LiveService]]:
        try:
            alias = ctx.registry.resolve(model)
        except Exception as e:  # the registry's own error says which models exist
            raise UnknownModel(str(e)) from None
        # A session holds a lease for its whole life: its model is not evicted under it.
        async with ctx.registry.lease(alias) as runtime:
            if alias not in services:
                async with making:
                    if alias not in services:
                        vad = await asyncio.to_thread(vad_model)
                        current = runtime.current
                        stats = LiveStats(keep=False, observe=observe)
                        service = LiveService(current.whisper, current.engine, vad, options, stats)
                        service.on_failure = functools.partial(fail_over, alias)
                        services[alias] = service
            service = services[alias]

            def engine_now(alias: str = alias, leased: Any = runtime) -> tuple[Any, Any]:
                # After a fail-over to the CPU (or a reload) decodes go to the engine that works now.
                current = ctx.registry.loaded.get(alias, leased).current
                return current.whisper, current.engine

            service.runtime = engine_now
            yield alias, service

    return service_for, list(api_keys if api_keys is not None else settings.api_keys), options.idle_timeout_s


def _live_metrics(ctx: Any, services: dict[str, LiveService]) -> Callable[[str, float], None]:
    """Live streams and their latencies in the server's /metrics."""
    from prometheus_client import Histogram

    metrics = ctx.metrics
    latency = Histogram(
        "voxserve_live_latency_seconds",
        "Live transcription: text (audio arriving -> its first text), final (end of speech -> completed), "
        "decode (one partial or final on the engine)",
        ["kind"],
        buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0),
        registry=metrics.registry,
    )
    metrics.add_live(
        "voxserve_live_streams",
        "Open realtime transcription streams",
        ["model"],
        lambda: [(alias, s.open_streams) for alias, s in list(services.items())],
    )

    def observe(kind: str, seconds: float) -> None:
        latency.labels(kind).observe(max(0.0, seconds))

    return observe


def _api_key(ws: WebSocket) -> str | None:
    auth = ws.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    for proto in ws.scope.get("subprotocols", []):
        if proto.startswith(KEY_PREFIX):
            return proto[len(KEY_PREFIX) :]
    return None


async def _refuse(ws: WebSocket, code: int, error_code: str, message: str) -> None:
    with contextlib.suppress(Exception):
        await ws.send_json(
            {
                "type": "error",
                "error": {"type": "invalid_request_error", "code": error_code, "message": message},
            }
        )
        await ws.close(code=code, reason=message[:120])


async def _serve(
    ws: WebSocket,
    service_for: ServiceFor,
    keys: list[str],
    idle_timeout: float,
    on_session: Callable[[LiveSession, WebSocket], None] | None = None,
) -> None:
    offered = ws.scope.get("subprotocols", [])
    await ws.accept(subprotocol="realtime" if "realtime" in offered else None)
    key = _api_key(ws)
    if keys and key not in keys:
        return await _refuse(
            ws, 1008, "invalid_api_key", "missing or invalid API key" if keys else "invalid API key"
        )
    intent = ws.query_params.get("intent")
    if intent != "transcription":
        return await _refuse(
            ws,
            1008,
            "unsupported_intent",
            f"this server does transcription only: use ?intent=transcription, got {intent!r}",
        )
    async with contextlib.AsyncExitStack() as stack:
        try:
            alias, service = await stack.enter_async_context(service_for(ws.query_params.get("model")))
        except UnknownModel as e:
            return await _refuse(ws, 1008, "model_not_found", str(e))
        except Exception as e:  # noqa: BLE001 - a model that cannot load must not take the server down
            log.exception("realtime: no model")
            return await _refuse(ws, 1011, "model_unavailable", f"the model could not be loaded: {e}")
        try:
            service.open_stream(key)
        except StreamLimitError as e:
            return await _refuse(ws, 1013 if e.scope == "server" else 1008, "too_many_streams", str(e))
        try:
            await _run_session(ws, alias, service, idle_timeout, on_session)
        finally:
            service.close_stream(key)


async def _run_session(
    ws: WebSocket,
    alias: str,
    service: LiveService,
    idle_timeout: float,
    on_session: Callable[[LiveSession, WebSocket], None] | None,
) -> None:
    lock = asyncio.Lock()

    async def send(event: dict[str, Any]) -> None:
        async with lock:
            if ws.client_state == WebSocketState.CONNECTED:
                await ws.send_text(json.dumps(event))

    session = LiveSession(service, send, model=alias)
    if on_session is not None:
        on_session(session, ws)
    errors = 0
    try:
        await session.start()
        while True:
            try:
                message = await asyncio.wait_for(ws.receive(), timeout=idle_timeout)
            except TimeoutError:
                await session.error(
                    "session_idle_timeout", f"no event for {idle_timeout:g} s; closing the session"
                )
                await ws.close(code=1000, reason="idle timeout")
                return
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if text is None:
                await session.error("invalid_event", "binary frames are not supported: send JSON text events")
                errors += 1
            else:
                try:
                    event = json.loads(text)
                except (ValueError, RecursionError):
                    await session.error("invalid_json", "the frame is not valid JSON")
                    errors += 1
                else:
                    before = session.errors
                    await session.handle(event)
                    errors = errors + 1 if session.errors > before else 0
            if errors >= MAX_ERRORS:
                await session.error("too_many_errors", f"{MAX_ERRORS} invalid events in a row; closing")
                await ws.close(code=1008, reason="too many invalid events")
                return
    except (WebSocketDisconnect, RuntimeError):
        return  # the client went away (RuntimeError: a send raced the disconnect)
    finally:
        await session.close()
