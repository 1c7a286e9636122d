"""An injected engine fault: the model moves to a fresh CPU engine, every accepted request is answered with
the same text a healthy server gives, and health and metrics say what happened."""

from __future__ import annotations

import threading

import pytest
from fastapi.testclient import TestClient

from tests.server.conftest import inject_step_fault, tone, wav_bytes
from voxserve.server.app import create_app

pytestmark = pytest.mark.slow


def _post(client, audio: bytes):
    return client.post(
        "/v1/audio/transcriptions",
        files={"file": ("a.wav", audio, "audio/wav")},
        data={"model": "tiny", "temperature": "0", "language": "en"},
    )


def test_engine_fault_moves_everything_to_the_cpu_engine(make_settings):
    clips = [wav_bytes(tone(1.5, freq=200 + 150 * i, seed=i)) for i in range(6)]
    with TestClient(create_app(make_settings(engine_slots=2, max_concurrency=6))) as healthy:
        expected = [_post(healthy, a).json()["text"] for a in clips]

    with TestClient(create_app(make_settings(engine_slots=2, max_concurrency=6))) as client:
        runtime = client.app.state.ctx.registry.loaded["tiny"]
        engine = runtime.primary.engine
        # Fail mid-decode, with requests both in slots and waiting in the engine's queue.
        inject_step_fault(engine, at_step=5)
        answers: list = [None] * len(clips)

        def send(i: int) -> None:
            answers[i] = _post(client, clips[i])

        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(clips))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

        assert engine.failure is not None  # the fault really hit the engine
        assert [a.status_code for a in answers] == [200] * len(clips)
        assert [a.json()["text"] for a in answers] == expected  # nothing lost, nothing changed
        health = client.get("/health").json()
        assert health == {"status": "ok", "engines_healthy": {"tiny": False}}
        metrics = client.get("/metrics").text
        assert 'voxserve_engine_fallbacks_total{model="tiny"} 1.0' in metrics
        assert 'voxserve_engine_healthy{model="tiny"} 0.0' in metrics
        # later requests go straight to the CPU engine
        assert _post(client, clips[0]).json()["text"] == expected[0]
