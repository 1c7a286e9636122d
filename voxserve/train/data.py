"""Training batches: utterances held in memory, laid out in windows, turned into log-mel and targets.

A window is as long as the encoder's context (30 s for every Whisper model: 1500 positions of 20 ms; a model
built with a shorter context trains on shorter windows, which keeps the CPU tests fast).

All audio is kept as one int16 tensor on the training device (a few GB for tens of hours), so building a
batch is slicing, augmentation and log-mel on the GPU with no host round trip. What goes into micro-batch ``m``
is a pure function of (seed, m): the order is a seeded permutation per epoch and every other random choice
(packing partners, gaps, timestamps or not, augmentation) is drawn from generators seeded with (seed, m). A
resumed run therefore sees exactly the batches the uninterrupted run would have seen, with no loader state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..audio.features import log_mel_spectrogram
from ..config import HOP_LENGTH, N_SAMPLES, SAMPLE_RATE
from ..tokenizer import Tokenizer
from .augment import NO_AUGMENTATION, Augmentation
from .ctc import ALPHABET, char_targets
from .manifest import Utterance
from .specaugment import SpecAugment
from .targets import MAX_TIMESTAMP_INDEX, Segment, collate, timestamp_token

MAX_PACKED = 8  # utterances per packed window at most
GAP_SECONDS = (0.05, 1.0)  # silence inserted between packed utterances


@dataclass(frozen=True)
class Batch:
    mel: Tensor  # [B, n_mels, 3000] float32
    inputs: Tensor  # [B, T] token ids
    labels: Tensor  # [B, T] next-token targets, IGNORE on padding
    n_utterances: int  # utterances in the batch (packed windows hold several)
    # For the auxiliary CTC loss: every window's characters (see ctc.char_targets), concatenated, and their
    # lengths [B]; a packed window's utterances are joined by a space in time order.
    chars: Tensor
    char_lengths: Tensor


class TrainingSet:
    """Utterances and their audio (16 kHz int16), ready to be drawn into batches."""

    def __init__(
        self,
        items: Sequence[Utterance],
        audio: Sequence[np.ndarray],
        tokenizer: Tokenizer,
        *,
        n_mels: int,
        max_tokens: int,
        window_samples: int = N_SAMPLES,
        device: torch.device,
        seed: int = 0,
        timestamps_prob: float = 0.0,
        pack_prob: float = 0.0,
        augmentation: Augmentation = NO_AUGMENTATION,
        spec_augment: SpecAugment | None = None,
    ) -> None:
        for name, p in (("timestamps_prob", timestamps_prob), ("pack_prob", pack_prob)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        self.tokenizer = tokenizer
        self.n_mels, self.max_tokens, self.device = n_mels, max_tokens, device
        self.window = window_samples
        self.seed, self.timestamps_prob, self.pack_prob = seed, timestamps_prob, pack_prob
        self.augmentation = augmentation
        self.spec_augment = spec_augment if spec_augment is not None and spec_augment.active else None
        # Each utterance's text is encoded once; windows are assembled from these (see _tokens).
        self._prefix = {}
        for lang in sorted({u.language for u in items}):
            self._prefix[lang] = list(tokenizer.with_options(language=lang, task="transcribe").sot_sequence)
        keep, self.skipped = [], []
        for u, a in zip(items, audio, strict=True):
            text = tokenizer.encode(" " + u.text.strip())
            # Whole utterances only: one longer than a window, or whose text outgrows the decoder, is skipped.
            longest = len(self._prefix[u.language]) + len(text) + 3  # two timestamps and <|endoftext|>
            if len(a) == 0 or len(a) > window_samples or longest > max_tokens:
                self.skipped.append(u)
            else:
                keep.append((u, a, text))
        if not keep:
            raise ValueError(
                f"no usable training utterances (all empty, longer than {window_samples / SAMPLE_RATE:g} s or too much text)"
            )
        self.items = [u for u, _, _ in keep]
        self._text = [t for _, _, t in keep]
        self._chars = [char_targets(u.text) for u in self.items]
        lengths = np.array([len(a) for _, a, _ in keep], dtype=np.int64)
        self.lengths = lengths
        self.offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        self.audio = torch.from_numpy(np.concatenate([a for _, a, _ in keep])).to(device)
        self._perm_epoch, self._perm = -1, np.empty(0, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.items)

    def _bounds(self, i: int) -> tuple[float, float]:
        u, duration = self.items[i], self.lengths[i] / SAMPLE_RATE
        if u.speech_start is None:
            return 0.0, duration
        return u.speech_start, min(u.speech_end, duration)

    def _primary(self, example: int) -> int:
        epoch, position = divmod(example, len(self.items))
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, 7919, epoch]).permutation(len(self.items))
            self._perm_epoch = epoch
        return int(self._perm[position])

    def window_layout(self, first: int, rng: np.random.Generator) -> tuple[list[tuple[int, int]], list[int]]:
        """One window: [(item, sample offset)] and its token sequence."""
        language = self.items[first].language
        timestamps = bool(rng.random() < self.timestamps_prob)
        packed = bool(rng.random() < self.pack_prob)
        placed = [(first, 0)]
        cursor = int(self.lengths[first])
        if packed:
            timestamps = True  # a packed window is only readable with its segments' times
            n_tokens = len(self._tokens(placed, language, True))
            for _ in range(4 * MAX_PACKED):
                if len(placed) >= MAX_PACKED:
                    break
                j = int(rng.integers(len(self.items)))
                gap = int(rng.uniform(*GAP_SECONDS) * SAMPLE_RATE)
                if self.items[j].language != language or cursor + gap + self.lengths[j] > self.window:
                    continue
                if n_tokens + len(self._text[j]) + 2 > self.max_tokens:
                    continue
                placed.append((j, cursor + gap))
                cursor += gap + int(self.lengths[j])
                n_tokens += len(self._text[j]) + 2
        return placed, self._tokens(placed, language, timestamps)

    def segments(self, placed: list[tuple[int, int]]) -> list[Segment]:
        """The window's utterances as timed segments (what ``targets.target_tokens`` describes)."""
        out = []
        for i, offset in placed:
            start, end = self._bounds(i)
            t0 = offset / SAMPLE_RATE
            out.append(Segment(t0 + start, t0 + end, self.items[i].text))
        return out

    def _tokens(self, placed: list[tuple[int, int]], language: str, timestamps: bool) -> list[int]:
        # The same sequence as target_tokens(self.segments(placed)), built from the cached text encodings;
        # the tests check the two agree.
        tok = self.tokenizer
        seq = list(self._prefix[language])
        if not timestamps:
            if len(placed) != 1:
                raise ValueError("a window without timestamps holds exactly one utterance")
            return [*seq, tok.no_timestamps, *self._text[placed[0][0]], tok.eot]
        for (i, _), segment in zip(placed, self.segments(placed), strict=True):
            begin = timestamp_token(tok, segment.start)
            end = min(
                max(begin + 1, timestamp_token(tok, segment.end)), tok.timestamp_begin + MAX_TIMESTAMP_INDEX
            )
            seq += [begin, *self._text[i], end]
        seq.append(tok.eot)
        return seq

    def batch(self, micro_step: int, batch_size: int) -> Batch:
        """Micro-batch number ``micro_step`` (0, 1, ...): the same inputs every time it is asked for."""
        rng = np.random.default_rng([self.seed, micro_step])
        windows = [
            self.window_layout(self._primary(micro_step * batch_size + b), rng) for b in range(batch_size)
        ]
        window = torch.zeros(batch_size, self.window, device=self.device)
        filled = torch.zeros(batch_size, dtype=torch.long)
        for row, (placed, _) in enumerate(windows):
            for i, offset in placed:
                n, start = int(self.lengths[i]), int(self.offsets[i])
                window[row, offset : offset + n] = self.audio[start : start + n].float() / 32768
                filled[row] = offset + n
        if self.augmentation.active:
            generator = torch.Generator(device=self.device).manual_seed(int(rng.integers(2**62)))
            filled = filled.to(self.device, non_blocking=True)
            region = torch.arange(self.window, device=self.device)[None, :] < filled[:, None]
            window, _ = self.augmentation(window, generator, speech=region, region=region)
        mel = log_mel_spectrogram(window, self.n_mels)
        # Its seed is drawn after the audio's: runs without masking see the batches they always saw.
        if self.spec_augment is not None:
            generator = torch.Generator(device=self.device).manual_seed(int(rng.integers(2**62)))
            frames = (filled.to(self.device) + HOP_LENGTH - 1) // HOP_LENGTH
            mel = self.spec_augment(mel, frames, generator)
        inputs, labels = collate([tokens for _, tokens in windows], self.tokenizer.eot)
        if self.device.type == "cuda":  # pinned, asynchronous copies keep the host from waiting on the GPU
            inputs, labels = inputs.pin_memory(), labels.pin_memory()
        n = sum(len(placed) for placed, _ in windows)
        chars, char_lengths = self._window_chars([placed for placed, _ in windows])
        return Batch(
            mel,
            inputs.to(self.device, non_blocking=True),
            labels.to(self.device, non_blocking=True),
            n,
            chars.to(self.device, non_blocking=True),
            char_lengths.to(self.device, non_blocking=True),
        )

    def _window_chars(self, layouts: list[list[tuple[int, int]]]) -> tuple[Tensor, Tensor]:
        space = ALPHABET.index(" ") + 1
        flat: list[int] = []
        lengths = []
        for placed in layouts:
            row: list[int] = []
            for i, _ in placed:  # placed in time order
                if row and self._chars[i]:
                    row.append(space)
                row += self._chars[i]
            flat += row
            lengths.append(len(row))
        return torch.tensor(flat, dtype=torch.long), torch.tensor(lengths, dtype=torch.long)


def window_samples(n_audio_ctx: int) -> int:
    """Samples in one window of an encoder with ``n_audio_ctx`` positions (480000, 30 s, for Whisper's 1500)."""
    return 2 * n_audio_ctx * HOP_LENGTH


def eval_mel(
    audio: Sequence[np.ndarray], n_mels: int, device: torch.device, n_samples: int = N_SAMPLES
) -> Tensor:
    """Log-mel [B, n_mels, frames] of utterances (int16) each padded to one window of ``n_samples``."""
    window = torch.zeros(len(audio), n_samples, device=device)
    for row, a in enumerate(audio):
        if len(a) > n_samples:
            raise ValueError(
                f"utterance of {len(a) / SAMPLE_RATE:.1f} s does not fit a {n_samples / SAMPLE_RATE:g} s window"
            )
        window[row, : len(a)] = torch.from_numpy(a.astype(np.float32) / 32768).to(device)
    return log_mel_spectrogram(window, n_mels)


__all__ = ["Batch", "TrainingSet", "eval_mel", "window_samples"]
