"""OpenAI's audio API: ``POST /v1/audio/transcriptions`` and ``POST /v1/audio/translations``."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, suppress
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import Response, StreamingResponse

from ...audio.errors import AudioError
from ...audio.io import load_audio
from ...decoding.options import OptionsError
from ...formats import format_result
from ...results import Segment, Transcription
from ..admission import Overloaded
from ..context import ServerContext
from ..errors import APIError, error_body, error_responses, from_library_error
from ..limits import check_api_key
from ..protocol import CONTENT_TYPES, Granularity, PriorityName, ResponseFormat, build_params, check_language
from ..runtime import ModelRuntime
from ..service import DeadlineExceeded, Params

router = APIRouter(prefix="/v1/audio", tags=["audio"], dependencies=[Depends(check_api_key)])

_ERRORS = error_responses(400, 401, 404, 413, 415, 429, 503, 504)


@router.post("/transcriptions", responses=_ERRORS)
async def transcriptions(
    request: Request,
    file: Annotated[UploadFile, File(description="audio in any format FFmpeg reads")],
    model: Annotated[str, Form(description="model alias; whisper-1 means the default")],
    language: Annotated[str | None, Form(max_length=40)] = None,
    prompt: Annotated[str | None, Form()] = None,
    response_format: Annotated[ResponseFormat, Form()] = "json",
    temperature: Annotated[float | None, Form(ge=0, le=1)] = None,
    timestamp_granularities: Annotated[
        list[Granularity] | None, Form(alias="timestamp_granularities[]")
    ] = None,
    stream: Annotated[bool, Form()] = False,
    hotwords: Annotated[list[str] | None, Form(description="phrase or phrase:weight, repeatable")] = None,
    keywords: Annotated[list[str] | None, Form(alias="keywords[]")] = None,
    priority: Annotated[PriorityName, Form()] = "interactive",
    deadline_ms: Annotated[int | None, Form(gt=0, le=24 * 3600 * 1000)] = None,
) -> Response:
    """Transcribe audio (OpenAI-compatible), with voxserve's hotwords, priority and deadline_ms."""
    return await _handle(
        request, "transcribe", file, model, language, prompt, response_format, temperature,
        timestamp_granularities or [], stream, [*(hotwords or []), *(keywords or [])], priority, deadline_ms,
    )  # fmt: skip


@router.post("/translations", responses=_ERRORS)
async def translations(
    request: Request,
    file: Annotated[UploadFile, File(description="audio in any format FFmpeg reads")],
    model: Annotated[str, Form(description="model alias; whisper-1 means the default")],
    prompt: Annotated[str | None, Form()] = None,
    response_format: Annotated[ResponseFormat, Form()] = "json",
    temperature: Annotated[float | None, Form(ge=0, le=1)] = None,
    stream: Annotated[bool, Form()] = False,
    hotwords: Annotated[list[str] | None, Form()] = None,
    priority: Annotated[PriorityName, Form()] = "interactive",
    deadline_ms: Annotated[int | None, Form(gt=0, le=24 * 3600 * 1000)] = None,
) -> Response:
    """Translate speech to English text (OpenAI-compatible)."""
    return await _handle(
        request, "translate", file, model, None, prompt, response_format, temperature, [], stream,
        hotwords or [], priority, deadline_ms,
    )  # fmt: skip


async def _handle(
    request: Request,
    task: str,
    file: UploadFile,
    model: str,
    language: str | None,
    prompt: str | None,
    response_format: str,
    temperature: float | None,
    granularities: list[str],
    stream: bool,
    hotwords: list[str],
    priority: str,
    deadline_ms: int | None,
) -> Response:
    received = time.monotonic()
    ctx: ServerContext = request.app.state.ctx
    if ctx.shutting_down:
        raise APIError(503, "the server is shutting down", code="shutting_down", headers={"Retry-After": "1"})
    params = build_params(
        task=task, language=language, prompt=prompt, response_format=response_format, temperature=temperature,
        granularities=granularities, hotwords=hotwords, priority=priority, deadline_ms=deadline_ms,
        received=received,
    )  # fmt: skip
    audio = await file.read()
    if not audio:
        raise APIError(400, "file: the upload is empty", code="empty_audio", param="file")

    stack = AsyncExitStack()
    try:
        runtime = await stack.enter_async_context(ctx.registry.lease(model))
        check_language(params, runtime.whisper.tokenizer)
        await _take_turn(ctx, stack, params)
        if stream:
            return StreamingResponse(
                _events(ctx, stack, runtime, audio, params), media_type="text/event-stream"
            )
        async with stack:
            result = await ctx.run_blocking(_work, ctx, runtime, audio, params, None)
    except BaseException:
        await stack.aclose()
        raise
    ctx.metrics.observe_stage("total", time.monotonic() - received)
    body = format_result(result, response_format, task=task)
    return Response(body, media_type=CONTENT_TYPES[response_format])


async def _take_turn(ctx: ServerContext, stack: AsyncExitStack, params: Params) -> None:
    """A decoding turn at the request's priority: 429 when its line is full, 504 if the deadline passes first."""
    timeout = None if params.deadline is None else max(0.0, params.deadline - time.monotonic())
    try:
        waited = await asyncio.wait_for(
            stack.enter_async_context(ctx.admission.turn(params.priority)), timeout
        )
    except Overloaded as e:
        ctx.metrics.rejected.labels("overloaded").inc()
        raise APIError(429, str(e), code="overloaded", headers={"Retry-After": str(e.retry_after)}) from None
    except TimeoutError:
        ctx.metrics.rejected.labels("deadline").inc()
        raise _deadline_error("") from None
    ctx.metrics.observe_stage("queue_wait", waited)


def _deadline_error(text: str) -> APIError:
    return APIError(
        504,
        "the deadline passed before the transcription finished; partial_text holds what was decoded by then",
        code="deadline_exceeded",
        extra={"partial_text": text},
    )


def _work(
    ctx: ServerContext,
    runtime: ModelRuntime,
    audio: bytes,
    params: Params,
    on_segment: Any,
) -> Transcription:
    """Blocking: decode the upload and transcribe it (runs in a worker thread)."""
    t0 = time.monotonic()
    try:
        samples = load_audio(audio, max_duration=ctx.settings.max_audio_seconds)
    except AudioError as e:
        raise from_library_error(e) from None
    ctx.metrics.observe_stage("decode", time.monotonic() - t0)
    try:
        return ctx.transcriber.transcribe(runtime, samples, params, on_segment)
    except DeadlineExceeded as e:
        ctx.metrics.rejected.labels("deadline").inc()
        raise _deadline_error(e.text) from None
    except OptionsError as e:
        raise from_library_error(e) from None


_lingering: set[asyncio.Future] = set()  # strong references to the tasks of _release_when_done


async def _release_when_done(work: asyncio.Future, held: AsyncExitStack) -> None:
    async with held:
        with suppress(BaseException):
            await work


def _sse(obj: dict) -> bytes:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()


async def _events(
    ctx: ServerContext, stack: AsyncExitStack, runtime: ModelRuntime, audio: bytes, params: Params
) -> AsyncIterator[bytes]:
    """Server-sent events: one ``transcript.text.delta`` per final segment, then ``transcript.text.done``."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Segment | None] = asyncio.Queue()

    def on_segment(s: Segment) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, s)

    async with stack:  # releases the decoding turn and the model lease when the stream ends
        work = asyncio.ensure_future(ctx.run_blocking(_work, ctx, runtime, audio, params, on_segment))
        work.add_done_callback(lambda _: loop.call_soon_threadsafe(queue.put_nowait, None))
        first = True
        try:
            while True:
                s = await queue.get()
                if s is None:
                    break
                delta = s.text.lstrip() if first else s.text
                first = False
                yield _sse({"type": "transcript.text.delta", "delta": delta})
        finally:
            if not work.done():
                # The client left. Starlette cancels this generator level-triggered (every await here raises
                # again), so awaiting the work would give up the turn early: a task holds the decoding turn
                # and the model lease until the worker thread is really done.
                task = asyncio.ensure_future(_release_when_done(work, stack.pop_all()))
                _lingering.add(task)
                task.add_done_callback(_lingering.discard)
        try:
            result = await work
        except APIError as e:
            body = error_body(e.status, e.message, code=e.code, param=e.param)
            body["error"].update(e.extra)
            yield _sse({"type": "error", **body})
            return
        except Exception as e:  # noqa: BLE001 - the stream has started: report in-band, never crash the server
            yield _sse({"type": "error", **error_body(500, f"internal error ({type(e).__name__})")})
            return
        yield _sse({"type": "transcript.text.done", "text": result.text})
