"""The stream benchmark over real WebSockets (``--transport ws``): the server's realtime route under uvicorn in
this process, the callers in separate client processes (100 streams each), so JSON, base64 and WebSocket framing
are measured too and the callers' own work does not share the server's event loop.

Callers send pcm16 at 16 kHz on a real-time schedule and time everything on their side (``time.monotonic`` is
one clock for all processes of a machine): a chunk's latency runs from its scheduled send to the first delta
(``audio_end_ms`` at or past the chunk's end) or completed event of the speech item holding it; items are known
from the speech_started / speech_stopped events.
"""

from __future__ import annotations

import asyncio
import json
import math
import multiprocessing as mp
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ..config import SAMPLE_RATE
from .callers import Track, chunk_payloads, pcm16, session_update, use_oracle

STREAMS_PER_PROCESS = 100


def serve(service: Any, tracks: list[Track], oracle: bool) -> tuple[Any, threading.Thread, int]:
    """uvicorn serving the realtime route over ``service`` on a free loopback port, in a thread."""
    from fastapi import FastAPI

    from ..server.realtime import realtime_router

    app = FastAPI()
    app.include_router(realtime_router(service, on_session=oracle_hook(tracks, oracle)))
    return serve_app(app)


def oracle_hook(tracks: list[Track], oracle: bool) -> Callable[[Any, Any], None]:
    """The realtime route's ``on_session``: with ``oracle``, the session of caller ``bench_track=i`` takes
    its speech events from track i's known utterance bounds instead of the VAD."""

    def attach_oracle(session: Any, ws: Any) -> None:
        i = int(ws.query_params.get("bench_track", -1))
        if oracle and 0 <= i < len(tracks):
            use_oracle(session, tracks[i])

    return attach_oracle


def serve_app(app: Any, start_timeout_s: float = 60.0) -> tuple[Any, threading.Thread, int]:
    """uvicorn serving ``app`` on a free loopback port, in a thread, once its start-up (lifespan) is done."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", ws_ping_interval=None)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            timed_out = thread.is_alive()
            server.should_exit = True  # (a start-up still running stops once it is done)
            thread.join(timeout=60)
            raise RuntimeError(
                "the benchmark's server did not start"
                + (
                    f" within {start_timeout_s:g} s"
                    if timed_out
                    else ": its start-up failed (the log above says why)"
                )
            )
        time.sleep(0.02)
    return server, thread, port


def run_clients(
    port: int,
    tracks: list[Track],
    chunk_ms: int,
    offsets: list[float],
    language: str | None,
    warmup_s: float,
    at_start: Callable[[], None] | None = None,
) -> tuple[list[float], int, list[float]]:
    """Run a caller per track (caller i sends ``tracks[i]``, the server's track ``bench_track=i``) in client
    processes; returns (latencies of counted chunks, counted chunks that never got text, sender lags), in
    seconds. Callers start ``offsets`` after a common time set once every client process is ready; chunks sent
    in the first ``warmup_s`` after the last start are not counted. ``at_start`` is called at that common time
    (the client processes' start-up is then over: rates measured from it are not diluted by it)."""
    n = len(tracks)
    seconds = max(len(t.audio) for t in tracks) / SAMPLE_RATE
    ctx = mp.get_context("spawn")
    queue, start = ctx.Queue(), ctx.Queue()
    procs = []
    for first in range(0, n, STREAMS_PER_PROCESS):
        ids = list(range(first, min(n, first + STREAMS_PER_PROCESS)))
        # Each process gets its callers' samples as the pcm16 they send (half the bytes of float32).
        args = (port, ids, [pcm16(tracks[i].audio) for i in ids], chunk_ms, [offsets[i] for i in ids],
                language, queue, start)  # fmt: skip
        procs.append(ctx.Process(target=_client_process, args=args, daemon=True))
    for p in procs:
        p.start()
    for _ in procs:
        queue.get(timeout=300)  # "ready": imports done
    t0 = time.monotonic() + 1.0
    for _ in procs:
        start.put((t0, t0 + max(offsets) + warmup_s))
    if at_start is not None:
        time.sleep(max(0.0, t0 - time.monotonic()))
        at_start()
    latencies: list[float] = []
    lags: list[float] = []
    missing = 0
    for _ in procs:
        lat, miss, lag = queue.get(timeout=seconds + 300)
        latencies += lat
        missing += miss
        lags += lag
    for p in procs:
        p.join(timeout=30)
    return latencies, missing, lags


def _client_process(
    port: int, ids: list[int], pcm: list[np.ndarray], chunk_ms: int, offsets: list[float],
    language: str | None, queue: Any, start: Any,
) -> None:  # fmt: skip
    queue.put("ready")
    t0, counted_from = start.get()

    async def main() -> tuple[list[float], int, list[float]]:
        results = await asyncio.gather(
            *(_caller(port, i, samples, chunk_ms, t0 + off, language, counted_from)
              for i, samples, off in zip(ids, pcm, offsets, strict=True))
        )  # fmt: skip
        return (
            [x for r in results for x in r[0]],
            sum(r[1] for r in results),
            [x for r in results for x in r[2]],
        )

    queue.put(asyncio.run(main()))


async def _caller(
    port: int, index: int, pcm: np.ndarray, chunk_ms: int, start: float, language: str | None,
    counted_from: float,
) -> tuple[list[float], int, list[float]]:  # fmt: skip
    from websockets.asyncio.client import connect

    chunk = chunk_ms * SAMPLE_RATE // 1000
    messages = [
        json.dumps({"type": "input_audio_buffer.append", "audio": payload})
        for payload in chunk_payloads(pcm, chunk)
    ]
    url = f"ws://127.0.0.1:{port}/v1/realtime?intent=transcription&bench_track={index}"
    events: list[tuple[float, dict]] = []
    due_times: list[float] = []
    lag: list[float] = []
    async with connect(url, max_size=None, ping_interval=None) as ws:
        await ws.recv()
        await ws.send(json.dumps(session_update(language)))
        await ws.recv()

        async def receive() -> None:
            async for raw in ws:
                events.append((time.monotonic(), json.loads(raw)))

        receiver = asyncio.create_task(receive())
        for k, message in enumerate(messages):
            due = start + k * chunk_ms / 1000
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            lag.append(time.monotonic() - due)
            due_times.append(due)
            await ws.send(message)
        await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        # Wait for the last finals: every started item completed (or 30 s).
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            kinds = [e["type"] for _, e in events]
            started = kinds.count("input_audio_buffer.speech_started")
            if kinds.count("conversation.item.input_audio_transcription.completed") >= started:
                break
            await asyncio.sleep(0.05)
        receiver.cancel()
    return (*_latencies(events, due_times, chunk_ms, counted_from), lag)


def _latencies(
    events: list[tuple[float, dict]], due: list[float], chunk_ms: int, counted_from: float
) -> tuple[list[float], int]:
    """Per counted chunk inside a speech item: seconds from its send to the first text covering it; and how
    many such chunks never got any."""
    items: dict[str, dict[str, Any]] = {}
    for t, e in events:
        kind, item = e.get("type"), e.get("item_id")
        if kind == "input_audio_buffer.speech_started":
            items[item] = {"start": e["audio_start_ms"], "end": math.inf, "texts": []}
        elif item in items and kind == "input_audio_buffer.speech_stopped":
            items[item]["end"] = e["audio_end_ms"]
        elif item in items and kind == "conversation.item.input_audio_transcription.delta":
            items[item]["texts"].append((e["audio_end_ms"], t))
        elif item in items and kind == "conversation.item.input_audio_transcription.completed":
            items[item]["texts"].append((math.inf, t))
    out, missing = [], 0
    for k, sent in enumerate(due):
        end_ms = (k + 1) * chunk_ms
        if sent < counted_from:
            continue
        for it in items.values():
            if it["start"] < end_ms <= it["end"]:
                shown = [t for covered, t in it["texts"] if covered >= end_ms]
                if shown:
                    out.append(min(shown) - sent)
                else:
                    missing += 1
                break
    return out, missing
