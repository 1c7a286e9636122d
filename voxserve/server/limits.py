"""Request-level guards: the upload size limit (413) and Bearer API keys (401).

The size limit is pure ASGI middleware so it acts before any body is parsed: a declared Content-Length over
the limit is refused at once; a body that grows past the limit while streaming (chunked uploads) is cut off,
and whatever the application would have answered is replaced by the 413.
"""

from __future__ import annotations

import hmac
import json

from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import APIError, error_body
from .metrics import ServerMetrics


class _TooLarge(Exception):
    pass


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, *, max_bytes: int, metrics: ServerMetrics | None = None) -> None:
        self.app, self.max_bytes, self.metrics = app, max_bytes, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        seen, over, started = 0, False, False

        async def limited_receive() -> Message:
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    over = True
                    raise _TooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if over:
                return  # the 413 below answers instead
            started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _TooLarge:
            pass
        except Exception:
            if not over:
                raise
        if over and not started:
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        if self.metrics is not None:
            self.metrics.rejected.labels("too_large").inc()
        body = json.dumps(
            error_body(
                413,
                f"request body exceeds the {self.max_bytes} byte limit",
                code="file_too_large",
                param="file",
            )
        ).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def check_api_key(request: Request) -> None:
    """FastAPI dependency: with API keys configured, /v1 requests need ``Authorization: Bearer <key>``."""
    keys: list[str] = request.app.state.ctx.settings.api_keys
    if not keys:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise APIError(
            401,
            "missing API key: send 'Authorization: Bearer <key>'",
            code="missing_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    # Compare against every key in constant time, so timing tells nothing about how close a guess was.
    if not any(hmac.compare_digest(token.strip().encode(), k.encode()) for k in keys):
        raise APIError(401, "invalid API key", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
