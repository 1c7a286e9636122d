"""An injected engine fault: the model moves to a fresh CPU engine, every accepted request is answered with
the same text a healthy server gives, and health and metrics say what happened."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.server.conftest import fault_clips, inject_step_fault, post_clip, start_posts
from voxserve.server.app import create_app

pytestmark = pytest.mark.slow


def test_engine_fault_moves_everything_to_the_cpu_engine(make_settings):
    clips = fault_clips()
    with TestClient(create_app(make_settings(engine_slots=2, max_concurrency=6))) as healthy:
        expected = [post_clip(healthy, a).json()["text"] for a in clips]

    with TestClient(create_app(make_settings(engine_slots=2, max_concurrency=6))) as client:
        runtime = client.app.state.ctx.registry.loaded["tiny"]
        engine = runtime.primary.engine
        # Fail mid-decode, with requests both in slots and waiting in the engine's queue.
        inject_step_fault(engine, at_step=5)
        answers, threads = start_posts(client, clips)
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
        assert post_clip(client, clips[0]).json()["text"] == expected[0]
