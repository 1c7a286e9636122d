"""Dependability edges found by attacking a running server: clients that leave mid-request (the decoding turn
stays held until the worker thread that decodes for them is really done, so admission never lets more requests
decode at once than its capacity), and jobs (queued on the event loop's thread; no audio left behind)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import httpx
from fastapi.testclient import TestClient

from voxserve.server.app import create_app


def _multipart(data: dict[str, str], wav: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    request = httpx.Request("POST", "http://x/", data=data, files={"file": ("a.wav", wav, "audio/wav")})
    body = request.read()
    return body, [(k.lower().encode(), v.encode()) for k, v in request.headers.items()]


def test_a_streaming_client_that_leaves_keeps_its_turn_until_the_decode_ends(make_settings, short_wav):
    app = create_app(make_settings(max_concurrency=1))
    ctx = app.state.ctx
    started, release = threading.Event(), threading.Event()

    def slow_transcribe(*args: Any, **kwargs: Any) -> Any:
        started.set()
        release.wait(30)
        raise RuntimeError("the client is gone anyway")

    ctx.transcriber.transcribe = slow_transcribe
    body, headers = _multipart({"model": "tiny", "stream": "true"}, short_wav)
    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
        "method": "POST", "scheme": "http", "path": "/v1/audio/transcriptions", "raw_path": b"",
        "root_path": "", "query_string": b"", "headers": headers, "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }  # fmt: skip

    async def scenario() -> tuple[int, int]:
        sent_body = False

        async def receive() -> dict:
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": body, "more_body": False}
            while not started.is_set():  # the client leaves once its audio is decoding
                await asyncio.sleep(0.01)
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            pass

        await asyncio.wait_for(app(scope, receive, send), 30)
        during = ctx.admission.running  # the request is answered (the client left); its decode goes on
        release.set()
        deadline = time.monotonic() + 10
        while ctx.admission.running and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return during, ctx.admission.running

    with TestClient(app) as client:
        during, after = client.portal.call(scenario)
    assert during == 1, "the turn was given up while its worker thread still decodes"
    assert after == 0


def test_a_job_is_queued_on_the_event_loop_thread(make_settings, short_wav):
    # asyncio.Queue is not thread-safe: a put from a request worker thread may not wake a job worker waiting
    # on the loop, and races its getters.
    app = create_app(make_settings())
    ctx = app.state.ctx
    with TestClient(app) as client:
        loop_thread = client.portal.call(threading.get_ident)
        queue = ctx.jobs._queue
        put, threads = queue.put_nowait, []

        def recording_put(item: str) -> None:
            threads.append(threading.get_ident())
            put(item)

        queue.put_nowait = recording_put
        r = client.post("/v1/jobs", files={"file": ("a.wav", short_wav, "audio/wav")}, data={"model": "tiny"})
        assert r.status_code == 202, r.text
        deadline = time.monotonic() + 60
        while client.get(f"/v1/jobs/{r.json()['id']}").json()["status"] != "done":
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert threads == [loop_thread]


def test_finished_and_failed_jobs_leave_no_audio_behind(make_settings, short_wav, tmp_path):
    app = create_app(make_settings())
    ctx = app.state.ctx
    with TestClient(app) as client:
        ids = []
        for audio in (short_wav, b"RIFF not really a wav file at all"):
            r = client.post(
                "/v1/jobs", files={"file": ("talk.wav", audio, "audio/wav")}, data={"model": "tiny"}
            )
            assert r.status_code == 202, r.text
            ids.append(r.json()["id"])
        deadline = time.monotonic() + 60
        while {client.get(f"/v1/jobs/{i}").json()["status"] for i in ids} - {"done", "failed"}:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        done, failed = (client.get(f"/v1/jobs/{i}").json() for i in ids)
    assert done["status"] == "done" and failed["status"] == "failed"
    assert "talk.wav" in failed["error"] and str(ctx.settings.jobs_dir) not in failed["error"]
    assert list(ctx.settings.jobs_dir.iterdir()) == []
