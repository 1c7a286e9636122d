"""Scoring a model on a manifest: transcribe each utterance as one 30 s window, then WER or CER.

Transcription goes through the library's batched window decoder (``voxserve.decoding.decode.decode_windows``),
greedy at temperature 0 without timestamps, one batch per language. ``voxserve train`` calls this on its
held-out set at intervals and ``voxserve eval`` on any manifest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..config import SAMPLE_RATE
from ..decoding.decode import decode_windows
from ..decoding.options import DecodingOptions
from ..metrics.wer import ErrorCounts, item_errors, metric_name
from ..model.whisper import Whisper
from ..tokenizer import Tokenizer
from .data import eval_mel, window_samples
from .manifest import ManifestError, Utterance


@dataclass
class EvalReport:
    totals: dict[str, ErrorCounts]  # per language
    rows: list[dict] = field(default_factory=list)  # per item: audio, language, reference, hypothesis, counts

    def summary(self) -> dict[str, dict]:
        """Per language: metric name, rate and counts."""
        return {
            lang: {
                "metric": metric_name(lang),
                "items": sum(r["language"] == lang for r in self.rows),
                **c.to_dict(),
            }
            for lang, c in self.totals.items()
        }

    def headline(self) -> str:
        parts = []
        for lang, s in self.summary().items():
            parts.append(
                f"{lang}: {s['metric']} {100 * s['rate']:.2f}% over {s['items']} items "
                f"(S={s['substitutions']} D={s['deletions']} I={s['insertions']}, N={s['reference_length']})"
            )
        return "; ".join(parts)


@torch.no_grad()
def transcribe_items(
    model: Whisper,
    tokenizer: Tokenizer,
    items: Sequence[Utterance],
    audio: Sequence[np.ndarray],
    *,
    batch_size: int = 32,
    language: str | None = None,
    sample_len: int | None = None,
    progress: bool = False,
) -> list[str]:
    """Greedy transcripts, in order, of utterances (int16 16 kHz audio, each at most 30 s). ``language``
    overrides the manifest's; None in both detects it."""
    from tqdm import tqdm

    n_samples = window_samples(model.dims.n_audio_ctx)
    for u, a in zip(items, audio, strict=True):
        if len(a) > n_samples:
            raise ManifestError(
                f"{u.audio}: {len(a) / SAMPLE_RATE:.1f} s is longer than one {n_samples / SAMPLE_RATE:g} s window; "
                "split it or use `voxserve transcribe` for long-form audio"
            )
    texts: list[str | None] = [None] * len(items)
    groups: dict[str | None, list[int]] = {}
    for i, u in enumerate(items):
        groups.setdefault(language or u.language, []).append(i)
    bar = tqdm(total=len(items), desc="transcribing", unit="utt", disable=not progress, leave=False)
    was_training = model.training
    model.eval()
    try:
        for lang, indices in groups.items():
            options = DecodingOptions(language=lang, without_timestamps=True, sample_len=sample_len)
            for start in range(0, len(indices), batch_size):
                chunk = indices[start : start + batch_size]
                mel = eval_mel([audio[i] for i in chunk], model.dims.n_mels, model.device, n_samples)
                for i, result in zip(chunk, decode_windows(model, tokenizer, mel, options), strict=True):
                    texts[i] = result.text
                bar.update(len(chunk))
    finally:
        model.train(was_training)
        bar.close()
    return [t or "" for t in texts]


def score(
    items: Sequence[Utterance], hypotheses: Sequence[str], *, language: str | None = None
) -> EvalReport:
    totals: dict[str, ErrorCounts] = {}
    rows = []
    for u, hyp in zip(items, hypotheses, strict=True):
        lang = language or u.language
        counts = item_errors(u.text, hyp, lang)
        totals[lang] = totals.get(lang, ErrorCounts()) + counts
        rows.append(
            {
                "audio": u.id or str(u.audio),
                "language": lang,
                "reference": u.text,
                "hypothesis": hyp,
                **counts.to_dict(),
            }
        )
    return EvalReport(totals, rows)


def evaluate(
    model: Whisper,
    tokenizer: Tokenizer,
    items: Sequence[Utterance],
    audio: Sequence[np.ndarray],
    *,
    batch_size: int = 32,
    language: str | None = None,
    sample_len: int | None = None,
    progress: bool = False,
) -> EvalReport:
    """Transcribe and score ``items``: WER for English, CER for Chinese (see voxserve.metrics).
    ``sample_len`` caps the tokens decoded per utterance (default: half the decoder context)."""
    hyps = transcribe_items(
        model, tokenizer, items, audio, batch_size=batch_size, language=language, sample_len=sample_len,
        progress=progress,
    )  # fmt: skip
    return score(items, hyps, language=language)


__all__ = ["EvalReport", "evaluate", "score", "transcribe_items"]
