"""Operations: settings from VOXSERVE_* variables, /ready, /metrics covering every series the Grafana
dashboard plots, and the serve command's model flags."""

from __future__ import annotations

import json
import re

import pytest
from fastapi.testclient import TestClient

from tests.conftest import ROOT
from tests.server.conftest import tone, wav_bytes
from voxserve.server.app import create_app
from voxserve.server.settings import ServerSettings


def test_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("VOXSERVE_MODELS", '{"a": "default", "b": "/m/b"}')
    monkeypatch.setenv("VOXSERVE_DEFAULT_MODEL", "b")
    monkeypatch.setenv("VOXSERVE_API_KEYS", '["k1"]')
    monkeypatch.setenv("VOXSERVE_MAX_UPLOAD_BYTES", "1000")
    s = ServerSettings()
    assert s.models == {"a": "default", "b": "/m/b"} and s.default_model == "b"
    assert s.api_keys == ["k1"] and s.max_upload_bytes == 1000
    with pytest.raises(ValueError, match="default_model"):
        ServerSettings(models={"a": "default"}, default_model="zz")
    with pytest.raises(ValueError, match="unknown priorities"):
        ServerSettings(queue_limits={"urgent": 3})


def test_serve_model_flags():
    from voxserve.cli.serve import _models

    assert _models(["/m/x", "big=/m/y"]) == ({"default": "/m/x", "big": "/m/y"}, "default")


def test_metrics_cover_the_dashboard(make_settings):
    dashboard = (ROOT / "deploy" / "grafana-dashboard.json").read_text()
    wanted = set(re.findall(r"voxserve_[a-z_]+", json.dumps(json.loads(dashboard))))
    with TestClient(create_app(make_settings())) as client:
        assert client.get("/ready").json()["ready"] is True
        r = client.post(
            "/v1/audio/transcriptions",
            files={"file": ("a.wav", wav_bytes(tone(1.0)), "audio/wav")},
            data={"model": "tiny", "temperature": "0", "language": "en"},
        )
        assert r.status_code == 200
        client.post("/v1/audio/transcriptions", data={"model": "tiny"})  # a refusal, so 4xx series exist
        metrics = client.get("/metrics").text
    exposed = set(re.findall(r"^(voxserve_[a-z_]+)", metrics, re.M))
    missing = {w for w in wanted if not any(e == w or e.startswith(w + "_") for e in exposed)}
    missing -= {"voxserve_gpu_memory_bytes"}  # no series without a GPU
    missing -= {"voxserve_rejected_total", "voxserve_engine_fallbacks_total"}  # counters appear on first use
    assert not missing
    for stage in ("decode", "features", "queue_wait", "encoder", "decoder", "total"):
        assert f'voxserve_stage_seconds_count{{stage="{stage}"}}' in metrics
