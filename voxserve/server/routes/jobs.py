"""``POST /v1/jobs`` (long files, answered at once with an id) and ``GET /v1/jobs/{id}`` (progress, result)."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Path, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response

from ...formats import format_result, verbose_dict
from ..context import ServerContext
from ..errors import APIError, error_responses
from ..limits import check_api_key
from ..protocol import CONTENT_TYPES, Granularity, ResponseFormat, build_params, check_language

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=[Depends(check_api_key)])


@router.post("", status_code=202, responses=error_responses(400, 401, 404, 413, 503))
async def create_job(
    request: Request,
    file: Annotated[UploadFile, File(description="audio in any format FFmpeg reads")],
    model: Annotated[str, Form()] = "whisper-1",
    task: Annotated[str, Form(pattern="^(transcribe|translate)$")] = "transcribe",
    language: Annotated[str | None, Form(max_length=40)] = None,
    prompt: Annotated[str | None, Form()] = None,
    temperature: Annotated[float | None, Form(ge=0, le=1)] = None,
    timestamp_granularities: Annotated[
        list[Granularity] | None, Form(alias="timestamp_granularities[]")
    ] = None,
    hotwords: Annotated[list[str] | None, Form()] = None,
) -> JSONResponse:
    """Queue a long file; poll ``GET /v1/jobs/{id}`` for progress and the result."""
    ctx: ServerContext = request.app.state.ctx
    if ctx.shutting_down:
        raise APIError(503, "the server is shutting down", code="shutting_down", headers={"Retry-After": "1"})
    params = build_params(
        task=task, language=language, prompt=prompt, response_format="verbose_json", temperature=temperature,
        granularities=timestamp_granularities or [], hotwords=hotwords or [], priority="batch",
        deadline_ms=None, received=time.monotonic(),
    )  # fmt: skip
    alias = ctx.registry.resolve(model)
    audio = await file.read()
    if not audio:
        raise APIError(400, "file: the upload is empty", code="empty_audio", param="file")
    runtime = await ctx.registry.get(alias)
    check_language(params, runtime.whisper.tokenizer)
    job_id = await ctx.jobs.submit(audio, file.filename or "audio", alias, params)
    job = ctx.jobs.store.get(job_id)
    assert job is not None
    return JSONResponse(_describe(ctx, job), status_code=202)


@router.get("/{job_id}", responses=error_responses(401, 404, 409))
async def get_job(
    request: Request,
    job_id: Annotated[str, Path(max_length=100)],
    response_format: Annotated[ResponseFormat | None, Query()] = None,
) -> Response:
    """The job's state and progress; once done, the result too (inline as verbose_json, or as
    ``response_format``)."""
    ctx: ServerContext = request.app.state.ctx
    job = ctx.jobs.store.get(job_id)
    if job is None:
        raise APIError(404, f"no job {job_id!r}", code="job_not_found", param="job_id")
    if response_format is None:
        return JSONResponse(_describe(ctx, job))
    if job["status"] != "done":
        raise APIError(
            409, f"job {job_id} is {job['status']}; its result exists once it is done", code="job_not_done"
        )
    result = ctx.jobs.result(job)
    return Response(format_result(result, response_format), media_type=CONTENT_TYPES[response_format])


def _describe(ctx: ServerContext, job: dict) -> dict:
    out = {
        "id": job["id"],
        "object": "transcription.job",
        "status": job["status"],
        "model": job["model"],
        "filename": job["filename"],
        "created_at": int(job["created"]),
        "duration": job["duration"],
        "progress": ctx.jobs.progress(job),
        "error": job["error"],
    }
    if job["status"] == "done":
        out["result"] = verbose_dict(ctx.jobs.result(job))
    return out
