"""The engine's slot count from free GPU memory (no GPU needed: the free-memory query is replaced)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from tests.conftest import TINY
from voxserve.engine import audio_cache
from voxserve.engine.engine import Engine, EngineError
from voxserve.engine.runner import slot_bytes
from voxserve.engine.types import EngineConfig

MODEL = SimpleNamespace(device=torch.device("cuda"), dims=TINY, dtype=torch.float16)


def _slots(monkeypatch, free: int, **config) -> int:
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, free))
    engine = SimpleNamespace(config=EngineConfig(**config))
    return Engine._slot_count(engine, MODEL)  # type: ignore[arg-type]


def test_slots_fill_the_memory_fraction_less_the_audio_cache(monkeypatch):
    need = slot_bytes(MODEL)  # type: ignore[arg-type]
    free = 4 * audio_cache.CAPACITY
    expected = (int(free * 0.6) - audio_cache.CAPACITY) // need
    assert _slots(monkeypatch, free, buckets=(1, 10**6)) == expected
    assert _slots(monkeypatch, free, buckets=(1, 8)) == 8  # never more than the largest batch bucket
    assert _slots(monkeypatch, free, max_slots=3) == 3  # given: memory is not asked


def test_too_little_memory_says_what_it_had(monkeypatch):
    with pytest.raises(
        EngineError, match=r"MiB allowed: 60% of 1536 MiB free, less 1024 MiB for the audio cache"
    ):
        _slots(monkeypatch, 3 * audio_cache.CAPACITY // 2)
