"""Errors as OpenAI's error JSON, ``{"error": {"message", "type", "param", "code"}}``, with precise statuses.

Routes raise :class:`APIError` (or let library errors through); the handlers installed by
:func:`install_error_handlers` turn every failure into that shape, so clients such as the official ``openai``
package raise their matching exception class with the message intact. Bad audio is 400/415, too large 413,
unknown model 404, overloaded 429 (with Retry-After), a passed deadline 504 (with the text decoded so far).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..audio.errors import AudioError, AudioTooLongError, EmptyAudioError, UnsupportedAudioError
from ..decoding.options import OptionsError

log = logging.getLogger("voxserve.server")

# OpenAI's error types by status
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    503: "server_error",
    504: "timeout_error",
}


class APIError(Exception):
    """A request that ends with an OpenAI-style error answer."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,  # more fields inside "error" (e.g. the partial text of a 504)
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.headers = headers or {}
        self.extra = extra or {}


def error_body(status: int, message: str, *, code: str | None = None, param: str | None = None) -> dict:
    return {
        "error": {
            "message": message,
            "type": _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error"),
            "param": param,
            "code": code,
        }
    }


def error_response(error: APIError) -> JSONResponse:
    body = error_body(error.status, error.message, code=error.code, param=error.param)
    body["error"].update(error.extra)
    return JSONResponse(body, status_code=error.status, headers=error.headers)


def from_library_error(e: Exception) -> APIError:
    """The API error for an exception raised by the library on bad input."""
    if isinstance(e, AudioTooLongError):
        return APIError(413, str(e), code="audio_too_long", param="file")
    if isinstance(e, UnsupportedAudioError):
        return APIError(415, str(e), code="unsupported_audio", param="file")
    if isinstance(e, EmptyAudioError):
        return APIError(400, str(e), code="empty_audio", param="file")
    if isinstance(e, AudioError):
        return APIError(400, str(e), code="invalid_audio", param="file")
    if isinstance(e, OptionsError):
        return APIError(400, str(e), code="invalid_option")
    raise TypeError(f"not a library input error: {e!r}")


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    parts, param = [], None
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header")]
        name = ".".join(loc) or "request"
        param = param or (loc[0] if loc else None)
        parts.append(f"{name}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request", param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # OpenAI answers malformed requests with 400 invalid_request_error (FastAPI's default would be 422).
        message, param = _validation_message(exc)
        return JSONResponse(error_body(400, message, code="invalid_request", param=param), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = str(exc.detail) if exc.detail else "error"
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route {request.method} {request.url.path}"
        return JSONResponse(
            error_body(exc.status_code, message), status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # A bug, not bad input: log it whole, tell the client only that it happened.
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(
            error_body(500, f"internal error ({type(exc).__name__}); the server logged the details"),
            status_code=500,
        )


# Documented error answers for the OpenAPI schema (schemathesis checks statuses against it).
def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {s: {"description": _TYPES.get(s, "error"), "model": None} for s in statuses}
