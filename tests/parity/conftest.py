"""Reference pairs: one set of seeded random weights loaded into voxserve and into openai-whisper.

Random weights at the usual scale give near-uniform logits, so every decode runs to the length limit and never
ends a segment. The decoding tests use larger weights and a stronger end-of-text embedding instead, so sequences
end at varied lengths, beams finish at different steps and windows split into several segments: the paths where
two implementations would part ways if they differed.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from voxserve.config import ModelDims
from voxserve.model.load import init_random, save_openai
from voxserve.model.whisper import Whisper
from voxserve.tokenizer import Tokenizer

whisper = pytest.importorskip("whisper")


def read_wav(path: Path) -> np.ndarray:
    """16-bit PCM WAV -> float32 in [-1, 1] (the shared 16 kHz files; no decoder library involved)."""
    with wave.open(str(path)) as w:
        assert w.getsampwidth() == 2 and w.getframerate() == 16000 and w.getnchannels() == 1
        return np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768


def decisive_model(
    dims: ModelDims, tokenizer: Tokenizer, *, std: float, eot_boost: float, seed: int = 0
) -> Whisper:
    model = init_random(dims, seed=seed, std=std)
    with torch.no_grad():
        model.decoder.token_embedding.weight[tokenizer.eot] *= eot_boost
    return model


def to_openai(model: Whisper, tmp_path: Path):  # noqa: ANN201 - whisper.model.Whisper
    path = save_openai(model, tmp_path / "model.pt")
    return whisper.load_model(str(path), device="cpu")


@pytest.fixture(scope="session")
def tokenizer(multilingual_tiktoken: Path) -> Tokenizer:
    return Tokenizer.from_tiktoken(multilingual_tiktoken)
