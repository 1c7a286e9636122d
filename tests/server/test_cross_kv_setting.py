"""The server's 8-bit cross K/V setting: validated, and a CPU engine (the fallback's device) keeps the model's
dtype instead of failing, since 8-bit cross K/V is CUDA only."""

from __future__ import annotations

import pytest

pytest.importorskip("pydantic_settings")

from pydantic import ValidationError  # noqa: E402

from tests.conftest import TINY  # noqa: E402
from voxserve.api import WhisperModel  # noqa: E402
from voxserve.engine.types import EngineConfig  # noqa: E402
from voxserve.model.load import CheckpointInfo, init_random  # noqa: E402
from voxserve.server.metrics import ServerMetrics  # noqa: E402
from voxserve.server.runtime import ModelRuntime  # noqa: E402
from voxserve.server.settings import ServerSettings  # noqa: E402


def test_setting_takes_model_or_int8_only():
    assert ServerSettings(engine_cross_kv="int8").engine_cross_kv == "int8"
    with pytest.raises(ValidationError):
        ServerSettings(engine_cross_kv="fp8")


def test_cpu_engine_keeps_the_model_dtype_under_an_int8_setting(tokenizer):
    whisper = WhisperModel(
        init_random(TINY, seed=0), tokenizer, CheckpointInfo("tiny", "random", None), is_random=True
    )
    runtime = ModelRuntime(
        "tiny", "random", whisper, loader=lambda *a, **k: whisper, engine_config=EngineConfig(max_slots=2, cross_kv="int8"),
        metrics=ServerMetrics(),
    )  # fmt: skip
    try:
        engine = runtime.current.engine
        assert engine.config.cross_kv == "model" and engine.runner.cross_scales is None
        assert runtime.memory_bytes() > 0
    finally:
        runtime.close()
