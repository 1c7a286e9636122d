"""Calibration: the activation ranges every quantizable Linear sees on representative audio.

Audio is cut into 30 s log-mel windows; the float reference decoder (greedy) gives each window a token sequence;
the statistics come from forward pre-hooks on the Linears during one encoder pass per window and one
teacher-forced decoder pass over its sequence (``decoder.forward_full``), so the decoder Linears see the
activations of real decoding, prompts and timestamps included. Offline work: host syncs are fine here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from ..audio.features import log_mel_spectrogram
from ..config import HOP_LENGTH, N_FRAMES, N_SAMPLES
from ..decoding.decode import WindowDecoder
from ..decoding.options import DecodingOptions
from ..model.quant import CalibrationStats, LinearStats, quantizable_linears, weights_hash
from ..model.whisper import Whisper
from ..tokenizer import Tokenizer

DEFAULT_QUANTILE = 0.9999


def audio_windows(samples: np.ndarray | Tensor, n_mels: int) -> list[Tensor]:
    """16 kHz mono samples -> consecutive 30 s log-mel windows [n_mels, 3000], the last one zero-padded."""
    samples = torch.as_tensor(samples, dtype=torch.float32)
    if samples.dim() != 1 or samples.numel() == 0:
        raise ValueError(f"audio must be non-empty 16 kHz mono samples, got shape {tuple(samples.shape)}")
    mel = log_mel_spectrogram(samples, n_mels, padding=N_SAMPLES)
    frames = math.ceil(samples.numel() / HOP_LENGTH)
    return [mel[:, start : start + N_FRAMES] for start in range(0, frames, N_FRAMES)]


@torch.inference_mode()
def reference_token_sequences(
    model: Whisper,
    tokenizer: Tokenizer,
    mels: Sequence[Tensor],
    *,
    language: str | None = None,
    batch_size: int = 8,
    sample_len: int | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> list[list[int]]:
    """Greedy-decode each window with the reference decoder; return its whole sequence for teacher forcing:
    the prompt (language detected per window when ``language`` is None), the sampled tokens and, when the
    window ended, end-of-text. ``on_batch(n)`` is called after each batch of n windows (progress)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    options = DecodingOptions(language=language, temperature=0.0, sample_len=sample_len)
    decoder = WindowDecoder(model, tokenizer, options)
    lang_pos = decoder.sot_index + 1 if tokenizer.is_multilingual else None
    sequences = []
    for start in range(0, len(mels), batch_size):
        batch = torch.stack([m for m in mels[start : start + batch_size]])
        for result in decoder.decode(batch):
            seq = list(decoder.initial_tokens)
            if lang_pos is not None:
                seq[lang_pos] = tokenizer.language_token(result.language)
            seq += list(result.tokens)
            if result.finish_reason == "stop":
                seq.append(tokenizer.eot)
            sequences.append(seq[: model.dims.n_text_ctx])
        if on_batch is not None:
            on_batch(batch.shape[0])
    return sequences


class _Recorder:
    """Forward pre-hook state for one Linear: running amax and the largest per-pass quantile of |input|."""

    def __init__(self, quantile: float) -> None:
        self.quantile = quantile
        self.amax = 0.0
        self.q = 0.0

    def __call__(self, module: torch.nn.Module, args: tuple[Tensor, ...]) -> None:
        a = args[0].detach().abs().float().reshape(-1)
        self.amax = max(self.amax, float(a.max()))
        # kthvalue, not torch.quantile: the latter refuses tensors over 16M elements.
        k = min(a.numel(), max(1, math.ceil(self.quantile * a.numel())))
        self.q = max(self.q, float(a.kthvalue(k).values))


@torch.inference_mode()
def collect_activation_stats(
    model: Whisper,
    mels: Iterable[Tensor],
    token_sequences: Iterable[Sequence[int]],
    *,
    quantile: float = DEFAULT_QUANTILE,
    meta: dict[str, str] | None = None,
    on_window: Callable[[], None] | None = None,
) -> CalibrationStats:
    """Input statistics of every block Linear over the windows ``mels`` (each [n_mels, frames]) and their
    teacher-forced ``token_sequences`` (one per window, prompt included), run through the float model."""
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"quantile must be in (0, 1], got {quantile}")
    recorders, handles = {}, []
    for name, linear in quantizable_linears(model):
        recorders[name] = _Recorder(quantile)
        handles.append(linear.register_forward_pre_hook(recorders[name]))
    n_windows = n_tokens = 0
    n_ctx = model.dims.n_text_ctx
    try:
        for mel, seq in _zip_strict(mels, token_sequences):
            if mel.dim() != 2 or mel.shape[0] != model.dims.n_mels:
                raise ValueError(f"each window must be [{model.dims.n_mels}, frames], got {tuple(mel.shape)}")
            if not 0 < len(seq) <= n_ctx:
                raise ValueError(f"token sequences must hold 1..{n_ctx} tokens, got {len(seq)}")
            features = model.encoder(mel[None].to(device=model.device, dtype=model.dtype))
            tokens = torch.tensor([list(seq)], dtype=torch.long, device=model.device)
            model.decoder.forward_full(tokens, features)
            n_windows += 1
            n_tokens += len(seq)
            if on_window is not None:
                on_window()
    finally:
        for h in handles:
            h.remove()
    if n_windows == 0:
        raise ValueError("no calibration windows were given")
    layers = {name: LinearStats(r.amax, r.q) for name, r in recorders.items()}
    return CalibrationStats(
        model_hash=weights_hash(model),
        layers=layers,
        quantile=quantile,
        n_windows=n_windows,
        n_tokens=n_tokens,
        meta=dict(meta or {}),
    )


def _zip_strict(a: Iterable, b: Iterable) -> Iterable[tuple]:
    sentinel = object()
    ia, ib = iter(a), iter(b)
    while True:
        x, y = next(ia, sentinel), next(ib, sentinel)
        if x is sentinel and y is sentinel:
            return
        if x is sentinel or y is sentinel:
            raise ValueError("mels and token_sequences differ in length: give one token sequence per window")
        yield x, y
