"""Sample-rate conversion in torch: one windowed-sinc polyphase filter for every rate change in voxserve.

``resample`` converts a whole signal (numpy or torch, CPU or CUDA, batched ``[..., T]``); ``StreamResampler``
converts a live stream chunk by chunk and produces exactly what ``resample`` gives for the whole signal. Both
run the same kernel, so file decoding, telephony streams and the GPU machine (which has no PyAV) share it.

How it works: the ratio ``target/orig`` is reduced to ``L/M``. Output sample ``j = q*L + p`` lies at input
position ``q*M + p*M/L``, so for a fixed phase ``p`` the outputs form a stride-``M`` convolution of the input
with a phase-shifted low-pass kernel: ``conv1d(x, weight[L, 1, K], stride=M)`` yields all phases at once.
Phases whose taps start close together share one such convolution, so a large ``M`` (44.1 kHz -> 16 kHz is
160/441) does not cost ``M`` zero taps per output. The low-pass is a Kaiser-windowed sinc whose stop band
starts at the lower of the two Nyquist frequencies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F

# Filter design, in units of the lower of the two rates. The pass band is flat to 0.9 of the lower Nyquist
# frequency and the stop band starts at that Nyquist frequency, so nothing that would alias is let through;
# a Kaiser window with beta 7 keeps the stop band below -70 dB, and 48 zero crossings per side are what that
# window needs for a transition band 0.1 Nyquist wide (Kaiser's length formula).
_ROLLOFF = 0.95
_HALF_CROSSINGS = 48
_BETA = 7.0
_MIN_PHASES = 16


A = TypeVar("A", np.ndarray, torch.Tensor)


@dataclass(frozen=True)
class _PhaseGroup:
    """Consecutive output phases that share one convolution: their taps start at input offset ``base``."""

    first: int
    weight: np.ndarray  # [phases, 1, taps] float64
    base: int


@dataclass(frozen=True)
class _Plan:
    up: int  # L
    down: int  # M
    pad: int  # zeros on the left; also the kernel's half-width, rounded up
    groups: tuple[_PhaseGroup, ...]


@lru_cache(maxsize=32)
def _plan(orig_rate: int, target_rate: int) -> _Plan:
    g = math.gcd(orig_rate, target_rate)
    up, down = target_rate // g, orig_rate // g
    # Few phases (48k -> 16k is 1/3) make a convolution with one or two output channels, which CPU kernels run
    # an order of magnitude slower per tap than a wider one; the same ratio written as 16/48 is exact too.
    k = -(-_MIN_PHASES // up)
    up, down = up * k, down * k
    scale = min(1.0, up / down)  # lower Nyquist as a fraction of the input Nyquist
    cutoff = _ROLLOFF * scale
    half_width = _HALF_CROSSINGS / scale  # in input samples
    pad = math.ceil(half_width)
    offsets = np.arange(up) * down // up  # floor(p*M/L): where each phase's taps start
    # A single convolution for all phases needs pad*2 + M taps, most of them zero when M is large. Grouping
    # phases whose taps start close together keeps each group's kernel near its 2*pad useful taps.
    per_group = min(up, max(_MIN_PHASES, (pad * up) // (2 * down)))
    groups = []
    for first in range(0, up, per_group):
        phases = np.arange(first, min(up, first + per_group))
        base = int(offsets[first])
        span = int(offsets[phases[-1]]) - base
        taps = 2 * pad + span + 1
        # Tap k of phase p reads input sample q*M + base + k - pad; its distance from the output position.
        t = pad + (phases[:, None] * down / up - base) - np.arange(taps)[None, :]
        inside = np.abs(t) <= half_width
        window = np.i0(_BETA * np.sqrt(np.clip(1.0 - (t / half_width) ** 2, 0.0, 1.0))) / np.i0(_BETA)
        h = np.where(inside, cutoff * np.sinc(cutoff * t) * window, 0.0)
        h /= h.sum(axis=1, keepdims=True)  # unit gain at DC for every phase
        groups.append(_PhaseGroup(first=first, weight=h[:, None, :], base=base))
    return _Plan(up=up, down=down, pad=pad, groups=tuple(groups))


_WEIGHTS: dict[tuple[int, int, int, str, torch.dtype], torch.Tensor] = {}


def _weight(plan: _Plan, index: int, like: torch.Tensor) -> torch.Tensor:
    key = (plan.up, plan.down, index, str(like.device), like.dtype)
    w = _WEIGHTS.get(key)
    if w is None:
        w = torch.from_numpy(plan.groups[index].weight).to(device=like.device, dtype=like.dtype)
        _WEIGHTS[key] = w
    return w


def _blocks(plan: _Plan, padded: torch.Tensor, n_blocks: int) -> torch.Tensor:
    """[B, >= n_blocks*M + 2*pad] input, whose sample 0 is ``pad`` before the first block -> [B, n_blocks*L]."""
    b = padded.shape[0]
    x = padded.unsqueeze(1)  # [B, 1, N]
    span = (n_blocks - 1) * plan.down
    parts = []
    for i, group in enumerate(plan.groups):
        w = _weight(plan, i, padded)
        taps = w.shape[-1]
        parts.append(F.conv1d(x[..., group.base : group.base + span + taps], w, stride=plan.down))
    out = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]  # [B, L, n_blocks]
    return out.transpose(1, 2).reshape(b, n_blocks * plan.up)


def _check_rates(orig_rate: int, target_rate: int) -> None:
    for name, rate in (("orig_rate", orig_rate), ("target_rate", target_rate)):
        if isinstance(rate, bool) or not isinstance(rate, int | np.integer) or rate <= 0:
            raise ValueError(f"{name} must be a positive integer, got {rate!r}")


def _as_float_tensor(audio: np.ndarray | torch.Tensor) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(audio)) if isinstance(audio, np.ndarray) else audio
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"audio must be a numpy array or torch tensor, got {type(audio).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"audio must hold floating-point samples, got {x.dtype}")
    if x.ndim == 0:
        raise ValueError("audio must have a time axis, got a scalar")
    return x


def _output_length(n_in: int, plan: _Plan) -> int:
    return -(-n_in * plan.up // plan.down)  # ceil: every input instant is covered


def resample(audio: A, orig_rate: int, target_rate: int) -> A:
    """Resample ``audio`` [..., T] from ``orig_rate`` to ``target_rate`` Hz along the last axis.

    Returns the same kind of array on the same device, with ``ceil(T * target_rate / orig_rate)`` samples.
    Float16/bfloat16 input is filtered in float32 and returned in its own dtype; float64 stays float64.
    Equal rates return the input unchanged.
    """
    _check_rates(orig_rate, target_rate)
    x = _as_float_tensor(audio)
    if orig_rate == target_rate:
        return audio
    plan = _plan(int(orig_rate), int(target_rate))
    lead, n_in = x.shape[:-1], x.shape[-1]
    work = x.reshape(math.prod(lead), n_in)
    if work.dtype not in (torch.float32, torch.float64):
        work = work.float()
    n_out = _output_length(n_in, plan)
    n_blocks = -(-n_out // plan.up)
    right = n_blocks * plan.down + plan.pad - n_in  # zeros after the signal so the last block is whole
    if n_blocks == 0 or work.shape[0] == 0:
        y = work.new_zeros(work.shape[0], n_out)
    else:
        y = _blocks(plan, F.pad(work, (plan.pad, right)), n_blocks)[:, :n_out]
    y = y.to(x.dtype).reshape(*lead, n_out)
    return y.numpy() if isinstance(audio, np.ndarray) else y


class StreamResampler:
    """Resample a live mono stream chunk by chunk (telephony at 8 kHz, realtime pcm16 at 24 kHz, decoders).

    ``push`` returns every output sample whose input window is complete; ``flush`` ends the stream and returns
    the rest. The concatenated outputs equal ``resample`` of the whole signal (up to float rounding); the
    output lags the input by about ``pad + M`` input samples (6 ms for 8 kHz -> 16 kHz). After ``flush`` the
    object starts a new stream. Chunks may be numpy or torch (any device); the output has the chunk's kind.
    """

    def __init__(self, orig_rate: int, target_rate: int) -> None:
        _check_rates(orig_rate, target_rate)
        self.orig_rate = int(orig_rate)
        self.target_rate = int(target_rate)
        self._plan = _plan(self.orig_rate, self.target_rate) if orig_rate != target_rate else None
        self._reset()

    def _reset(self) -> None:
        self._buffer: torch.Tensor | None = None  # input from `pad` samples before the next block onward
        self._n_in = 0
        self._n_out = 0

    @property
    def samples_in(self) -> int:
        """Input samples pushed since the stream began."""
        return self._n_in

    def push(self, chunk: A) -> A:
        """Feed the next 1-D chunk; returns the output samples that are now final (possibly none)."""
        x = _as_float_tensor(chunk)
        if x.ndim != 1:
            raise ValueError(f"StreamResampler takes 1-D mono chunks, got shape {tuple(x.shape)}")
        self._n_in += x.shape[0]
        if self._plan is None:
            self._n_out += x.shape[0]
            return chunk.copy() if isinstance(chunk, np.ndarray) else chunk.clone()
        plan = self._plan
        work = x if x.dtype in (torch.float32, torch.float64) else x.float()
        if self._buffer is None:
            self._buffer = work.new_zeros(plan.pad)
        buf = torch.cat([self._buffer, work.to(self._buffer)])
        n_blocks = max(0, (buf.shape[0] - 2 * plan.pad) // plan.down)
        y = self._run(buf, n_blocks)
        self._buffer = buf[n_blocks * plan.down :]
        return self._like(y, chunk)

    def flush(self, like: np.ndarray | torch.Tensor | None = None) -> np.ndarray | torch.Tensor:
        """End the stream: return the remaining output (numpy unless ``like`` is a tensor) and reset."""
        total = _output_length(self._n_in, self._plan) if self._plan is not None else self._n_in
        remaining = total - self._n_out
        if self._plan is None or self._buffer is None or remaining <= 0:
            y = torch.zeros(0) if self._buffer is None else self._buffer.new_zeros(0)
        else:
            plan = self._plan
            n_blocks = -(-remaining // plan.up)
            need = n_blocks * plan.down + 2 * plan.pad
            buf = F.pad(self._buffer, (0, max(0, need - self._buffer.shape[0])))
            y = self._run(buf, n_blocks)[:remaining]
        out = self._like(y, like if like is not None else np.zeros(0, np.float32))
        self._reset()
        return out

    def _run(self, buf: torch.Tensor, n_blocks: int) -> torch.Tensor:
        if n_blocks == 0:
            return buf.new_zeros(0)
        y = _blocks(self._plan, buf[None], n_blocks)[0]
        self._n_out += y.shape[0]
        return y

    @staticmethod
    def _like(y: torch.Tensor, chunk: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        if isinstance(chunk, np.ndarray):
            return y.cpu().numpy().astype(chunk.dtype, copy=False)
        return y.to(device=chunk.device, dtype=chunk.dtype)


__all__ = ["StreamResampler", "resample"]
