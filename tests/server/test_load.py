"""A bounded load test on loopback: within capacity every request succeeds; beyond it the excess gets 429
with Retry-After, nothing fails otherwise, and the process's memory does not grow from one overload to the
next."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import httpx
import pytest

from tests.server.conftest import LiveServer, tone, wav_bytes
from voxserve.server.app import create_app

pytestmark = pytest.mark.slow

CAPACITY, QUEUE = 2, 4


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


async def _burst(url: str, n: int, audio: bytes) -> tuple[Counter, list[str], float]:
    async with httpx.AsyncClient(timeout=120) as client:

        async def one() -> httpx.Response:
            return await client.post(
                url + "/v1/audio/transcriptions",
                files={"file": ("a.wav", audio, "audio/wav")},
                data={"model": "tiny", "language": "en", "temperature": "0"},
            )

        t0 = time.monotonic()
        answers = await asyncio.gather(*(one() for _ in range(n)))
        elapsed = time.monotonic() - t0
    statuses = Counter(r.status_code for r in answers)
    retry_after = [r.headers.get("retry-after", "") for r in answers if r.status_code == 429]
    return statuses, retry_after, elapsed


def test_capacity_then_overload(make_settings):
    settings = make_settings(
        max_concurrency=CAPACITY,
        queue_limits={"realtime": 0, "interactive": QUEUE, "batch": 0},
        engine_slots=CAPACITY,
    )
    audio = wav_bytes(tone(1.0))
    with LiveServer(create_app(settings)) as server:
        ok, _, t_ok = asyncio.run(_burst(server.url, CAPACITY + QUEUE, audio))
        assert ok == {200: CAPACITY + QUEUE}  # exactly what the server holds: no refusals, no errors

        rss = []
        for _ in range(3):
            statuses, retry_after, t_over = asyncio.run(_burst(server.url, 8 * (CAPACITY + QUEUE), audio))
            assert set(statuses) <= {200, 429}, statuses
            assert statuses[200] >= CAPACITY + QUEUE and statuses[429] > 0
            assert all(v.isdigit() and int(v) >= 1 for v in retry_after)
            rss.append(_rss_bytes())
        print(
            f"\nload: {CAPACITY + QUEUE} requests in {t_ok:.2f} s all 200; "
            f"overload of {8 * (CAPACITY + QUEUE)}: {dict(statuses)} in {t_over:.2f} s; "
            f"RSS after each overload: {[round(r / 2**20) for r in rss]} MiB"
        )
        # Memory is bounded: a third overload costs no more than a few uploads' worth over the second.
        assert rss[2] - rss[1] < 20 * len(audio) + 32 * 2**20
        assert httpx.get(server.url + "/health").json()["status"] == "ok"
        metrics = httpx.get(server.url + "/metrics").text
        assert 'voxserve_rejected_total{reason="overloaded"}' in metrics
        assert 'route="/v1/audio/transcriptions",status="429"' in metrics
