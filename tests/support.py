"""Helpers shared by test modules: reading the shared WAV files and building decisive random models.

Random weights at the usual scale give near-uniform logits, so every decode runs to the length limit and never
ends a segment. ``decisive_model`` uses larger weights and a stronger end-of-text embedding instead, so
sequences end at varied lengths, beams finish at different steps and windows split into several segments: the
paths where two implementations would part ways if they differed.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import torch

from voxserve.config import ModelDims
from voxserve.model.load import init_random
from voxserve.model.whisper import Whisper
from voxserve.tokenizer import Tokenizer


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
