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

from voxserve.audio.features import log_mel_spectrogram
from voxserve.config import ModelDims
from voxserve.engine.types import RowSpec
from voxserve.model.load import init_random
from voxserve.model.whisper import Whisper
from voxserve.tokenizer import Tokenizer


def prompted_specs(tokenizer: Tokenizer, lengths: list[int], sample_len: int = 6) -> list[RowSpec]:
    """Greedy row specs with prompts of ``lengths`` tokens: <|startoftranscript|>, a language, no-timestamps,
    then random text tokens (a live partial's forced prefix)."""
    g = torch.Generator().manual_seed(3)
    head = (tokenizer.sot, tokenizer.sot + 1, tokenizer.no_timestamps)
    return [
        RowSpec(
            initial_tokens=(head + tuple(torch.randint(100, 5000, (max(n - 3, 0),), generator=g).tolist()))[
                :n
            ],
            sot_index=0,
            suppress=(tokenizer.eot,),
            suppress_blank=True,
            timestamps=False,
            max_initial_timestamp_index=None,
            sample_len=sample_len,
            temperature=0.0,
        )
        for n in lengths
    ]


def attention_from_cu(q, k, v, n_head, index, cu, *, causal=False):  # noqa: ANN001, ANN201
    """packed.varlen_attention's stand-in that reads the sequences from ``cu`` itself (a mask, no host bounds),
    as a CUDA graph's replay must: what the captured passes get from FlashAttention, on the CPU."""
    p, c = q.shape
    seq = torch.searchsorted(cu[1:].long(), torch.arange(p), right=True)  # each position's sequence
    mask = seq[:, None] == seq[None, :]
    if causal:
        mask &= torch.ones(p, p, dtype=torch.bool).tril()
    heads = [x.reshape(p, n_head, c // n_head).transpose(0, 1) for x in (q, k, v)]
    out = torch.nn.functional.scaled_dot_product_attention(*heads, attn_mask=mask)
    return out.transpose(0, 1).reshape(p, c)


def window_log_mel(signal: np.ndarray, frames: int, n_mels: int = 80) -> torch.Tensor:
    """A window's log-mel as the host makes it: its audio, silence up to ``frames`` hops, transformed alone."""
    return log_mel_spectrogram(np.pad(signal, (0, 160 * frames - len(signal))), n_mels)[:, :frames]


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
