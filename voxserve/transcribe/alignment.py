"""Word timestamps: align decoded text to the audio through cross-attention and dynamic time warping.

The text tokens of a window are run once more through the decoder (teacher forced). The cross-attention scores
of the checkpoint's alignment heads say which audio frames each token looked at; normalised, median-filtered and
averaged over heads, they form a token x frame similarity whose cheapest monotonic path (DTW) gives each token a
start frame. Words take the times of their first token and of the next word's first token. The heuristics after
that (long words at pauses and sentence ends, punctuation merged into words) follow Whisper's, so timings agree
with the reference implementation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import HOP_LENGTH, SAMPLE_RATE, TOKENS_PER_SECOND
from ..model.whisper import Whisper
from ..results import Word
from ..tokenizer import Tokenizer

SENTENCE_END = ".。!！?？"


@dataclass
class WordTiming:
    word: str
    tokens: list[int]
    start: float
    end: float
    probability: float


@dataclass
class DraftSegment:
    """A segment while its window is still being worked on (times may move when words are aligned)."""

    seek: int
    start: float
    end: float
    tokens: list[int]  # text and timestamp tokens
    text: str
    words: list[Word] = field(default_factory=list)


def median_filter(x: Tensor, width: int) -> Tensor:
    """Median over a sliding window of odd ``width`` along the last dimension, reflect-padded at the edges."""
    if width < 1 or width % 2 == 0:
        raise ValueError(f"median filter width must be a positive odd number, got {width}")
    pad = width // 2
    if x.shape[-1] <= pad:
        return x  # too short to reflect-pad; nothing to smooth
    shape = x.shape
    padded = F.pad(x.reshape(-1, 1, shape[-1]), (pad, pad), mode="reflect")
    return padded.unfold(-1, width, 1).median(dim=-1).values.reshape(shape)


def dtw(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cheapest monotonic path through cost [N, M] from (0, 0) to (N-1, M-1) -> (row indices, column indices).

    Steps are diagonal, down or right. Cells on one anti-diagonal do not depend on each other, so each diagonal
    is filled with one vectorised step. Accumulated costs are float32 and ties prefer right, then down, as in
    Whisper's implementation, so the same path comes out.
    """
    n, m = cost.shape
    acc = np.full((n + 1, m + 1), np.inf, dtype=np.float32)
    trace = np.full((n + 1, m + 1), -1, dtype=np.int8)
    acc[0, 0] = 0
    x = cost.astype(np.float64, copy=False)
    for d in range(2, n + m + 1):
        i = np.arange(max(1, d - m), min(n, d - 1) + 1)
        j = d - i
        diag, up, left = acc[i - 1, j - 1], acc[i - 1, j], acc[i, j - 1]
        step = np.where((diag < up) & (diag < left), 0, np.where((up < diag) & (up < left), 1, 2))
        acc[i, j] = x[i - 1, j - 1] + np.choose(step, [diag, up, left])
        trace[i, j] = step
    return _backtrace(trace)


def _backtrace(trace: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    trace[0, :] = 2
    trace[:, 0] = 1
    i, j = trace.shape[0] - 1, trace.shape[1] - 1
    path = []
    while i > 0 or j > 0:
        path.append((i - 1, j - 1))
        step = trace[i, j]
        if step == 0:
            i, j = i - 1, j - 1
        elif step == 1:
            i -= 1
        else:
            j -= 1
    rows, cols = np.array(path[::-1]).T
    return rows, cols


@torch.no_grad()
def find_alignment(
    model: Whisper,
    tokenizer: Tokenizer,
    text_tokens: list[int],
    audio_features: Tensor,
    num_frames: int,
    *,
    medfilt_width: int = 7,
    qk_scale: float = 1.0,
) -> list[WordTiming]:
    """Word timings (seconds from the window start) for ``text_tokens`` decoded from one window.

    audio_features [1, S, C] are the window's encoder output; ``num_frames`` mel frames of it hold audio.
    """
    if not text_tokens:
        return []
    sot = list(tokenizer.sot_sequence)
    tokens = torch.tensor([[*sot, tokenizer.no_timestamps, *text_tokens, tokenizer.eot]], device=model.device)
    logits, scores = model.decoder.cross_attention_scores(tokens, audio_features)
    probs = logits[0, len(sot) :, : tokenizer.eot].softmax(dim=-1)
    token_probs = probs[torch.arange(len(text_tokens)), torch.tensor(text_tokens)].tolist()

    heads = model.alignment_heads.nonzero().tolist()  # [(layer, head)] in layer order
    weights = torch.stack([scores[layer][0, head] for layer, head in heads])  # [heads, tokens, frames]
    weights = (weights[:, :, : num_frames // 2] * qk_scale).softmax(dim=-1)
    std, mean = torch.std_mean(weights, dim=-2, keepdim=True, unbiased=False)
    weights = median_filter((weights - mean) / std, medfilt_width)
    matrix = weights.mean(dim=0)[len(sot) : -1]
    text_index, time_index = dtw(-matrix.double().cpu().numpy())

    words, word_tokens = tokenizer.split_to_word_tokens([*text_tokens, tokenizer.eot])
    if len(word_tokens) <= 1:
        return []  # only end-of-text: nothing to time
    boundaries = np.pad(np.cumsum([len(t) for t in word_tokens[:-1]]), (1, 0))
    jumps = np.pad(np.diff(text_index), (1, 0), constant_values=1).astype(bool)
    jump_times = time_index[jumps] / TOKENS_PER_SECOND
    return [
        WordTiming(word, toks, float(jump_times[i]), float(jump_times[j]), float(np.mean(token_probs[i:j])))
        for word, toks, i, j in zip(words, word_tokens, boundaries[:-1], boundaries[1:], strict=False)
    ]


def merge_punctuations(alignment: list[WordTiming], prepended: str, appended: str) -> None:
    """Fold opening punctuation into the following word and closing punctuation into the preceding one."""
    i, j = len(alignment) - 2, len(alignment) - 1
    while i >= 0:
        prev, nxt = alignment[i], alignment[j]
        if prev.word.startswith(" ") and prev.word.strip() in prepended:
            nxt.word, nxt.tokens = prev.word + nxt.word, prev.tokens + nxt.tokens
            prev.word, prev.tokens = "", []
        else:
            j = i
        i -= 1
    i, j = 0, 1
    while j < len(alignment):
        prev, nxt = alignment[i], alignment[j]
        if not prev.word.endswith(" ") and nxt.word in appended:
            prev.word, prev.tokens = prev.word + nxt.word, prev.tokens + nxt.tokens
            nxt.word, nxt.tokens = "", []
        else:
            i = j
        j += 1


def add_word_timestamps(
    segments: list[DraftSegment],
    model: Whisper,
    tokenizer: Tokenizer,
    audio_features: Tensor,
    num_frames: int,
    *,
    prepend_punctuations: str,
    append_punctuations: str,
    last_speech_timestamp: float,
) -> float:
    """Give the segments of one window their words (in place); returns the new end of the last speech."""
    if not segments:
        return last_speech_timestamp
    per_segment = [[t for t in s.tokens if t < tokenizer.eot] for s in segments]
    alignment = find_alignment(
        model, tokenizer, [t for toks in per_segment for t in toks], audio_features, num_frames
    )
    durations = np.array([t.end - t.start for t in alignment])
    durations = durations[durations.nonzero()]
    median = min(0.7, float(np.median(durations))) if len(durations) else 0.0
    longest = median * 2

    # Words at sentence boundaries tend to absorb the pause next to them: cap them at twice the median.
    if len(durations):
        for i in range(1, len(alignment)):
            if alignment[i].end - alignment[i].start > longest:
                if alignment[i].word in SENTENCE_END:
                    alignment[i].end = alignment[i].start + longest
                elif alignment[i - 1].word in SENTENCE_END:
                    alignment[i].start = alignment[i].end - longest
    merge_punctuations(alignment, prepend_punctuations, append_punctuations)

    offset = segments[0].seek * HOP_LENGTH / SAMPLE_RATE
    k = 0
    for segment, text_tokens in zip(segments, per_segment, strict=True):
        taken = 0
        words: list[dict[str, float | str]] = []
        while k < len(alignment) and taken < len(text_tokens):
            t = alignment[k]
            if t.word:
                words.append(
                    {
                        "word": t.word,
                        "start": round(offset + t.start, 2),
                        "end": round(offset + t.end, 2),
                        "probability": t.probability,
                    }
                )
            taken += len(t.tokens)
            k += 1
        if words:
            last_speech_timestamp = _fit_segment_to_words(
                segment, words, median, longest, last_speech_timestamp
            )
        segment.words = [
            Word(float(w["start"]), float(w["end"]), str(w["word"]), float(w["probability"])) for w in words
        ]
    return last_speech_timestamp


def _fit_segment_to_words(
    segment: DraftSegment, words: list[dict], median: float, longest: float, last_speech: float
) -> float:
    """Trim implausibly long first/last words at pauses and reconcile them with the segment's own times."""
    first, last = words[0], words[-1]
    # After a pause, the first word (or the first two) tends to start too early: cap its length.
    if first["end"] - last_speech > median * 4 and (
        first["end"] - first["start"] > longest
        or (len(words) > 1 and words[1]["end"] - first["start"] > longest * 2)
    ):
        if len(words) > 1 and words[1]["end"] - words[1]["start"] > longest:
            boundary = max(words[1]["end"] / 2, words[1]["end"] - longest)
            first["end"] = words[1]["start"] = boundary
        first["start"] = max(0, first["end"] - longest)
    # Prefer the segment's own start when the first word is too long, else move the segment to the word.
    if segment.start < first["end"] and segment.start - 0.5 > first["start"]:
        first["start"] = max(0, min(first["end"] - median, segment.start))
    else:
        segment.start = first["start"]
    if segment.end > last["start"] and segment.end + 0.5 < last["end"]:
        last["end"] = max(last["start"] + median, segment.end)
    else:
        segment.end = last["end"]
    return segment.end
