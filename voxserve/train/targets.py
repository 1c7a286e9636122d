"""Decoder targets for training: the token sequences the model learns to produce for a 30 s window.

A window holds one utterance or several packed one after another. Its sequence is
``<|startoftranscript|> <|lang|> <|transcribe|>`` then either ``<|notimestamps|> text`` or, for timestamped
targets, ``<|t_start|> text <|t_end|>`` per utterance, then ``<|endoftext|>``. Times are quantised to Whisper's
0.02 s steps. The loss covers every token after ``<|startoftranscript|>``, the language token included, so the
model also learns to detect the language.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..config import TIME_PRECISION
from ..tokenizer import Tokenizer

IGNORE = -100  # label value cross_entropy skips
MAX_TIMESTAMP_INDEX = 1500  # <|30.00|>


@dataclass(frozen=True)
class Segment:
    start: float  # seconds from the window start where the speech begins
    end: float
    text: str


def timestamp_token(tokenizer: Tokenizer, seconds: float) -> int:
    index = min(MAX_TIMESTAMP_INDEX, max(0, round(seconds / TIME_PRECISION)))
    return tokenizer.timestamp_begin + index


def _text_tokens(tokenizer: Tokenizer, text: str) -> list[int]:
    return tokenizer.encode(" " + text.strip())


def target_tokens(
    tokenizer: Tokenizer, language: str, segments: Sequence[Segment], *, timestamps: bool
) -> list[int]:
    """The whole sequence, <|startoftranscript|> ... <|endoftext|>, for the window's ``segments``."""
    if not segments:
        raise ValueError("a window needs at least one segment")
    tok = tokenizer.with_options(language=language, task="transcribe")
    seq = list(tok.sot_sequence)
    if not timestamps:
        seq.append(tok.no_timestamps)
        seq += _text_tokens(tok, " ".join(s.text.strip() for s in segments))
    else:
        for s in segments:
            begin = timestamp_token(tok, s.start)
            end = max(begin + 1, timestamp_token(tok, s.end))  # a segment spans at least one step
            seq += [begin, *_text_tokens(tok, s.text), min(end, tok.timestamp_begin + MAX_TIMESTAMP_INDEX)]
    seq.append(tok.eot)
    return seq


def collate(sequences: Sequence[Sequence[int]], pad: int) -> tuple[Tensor, Tensor]:
    """Teacher-forcing (inputs, labels) [B, T]: inputs are each sequence without its last token, labels
    without its first; padding is ``pad`` in the inputs and IGNORE in the labels."""
    width = max(len(s) for s in sequences) - 1
    inputs = torch.full((len(sequences), width), pad, dtype=torch.long)
    labels = torch.full((len(sequences), width), IGNORE, dtype=torch.long)
    for i, s in enumerate(sequences):
        t = torch.as_tensor(s, dtype=torch.long)
        inputs[i, : len(s) - 1] = t[:-1]
        labels[i, : len(s) - 1] = t[1:]
    return inputs, labels


__all__ = ["IGNORE", "Segment", "collate", "target_tokens", "timestamp_token"]
