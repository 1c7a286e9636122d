"""Log-mel features: 16 kHz float audio -> the [n_mels, frames] input the encoder expects.

The mel filterbank is computed here (Slaney-style, as Whisper's was made), not read from a data file.
STFT, power, filterbank, log and normalisation all run in float32 on the audio's device.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import HOP_LENGTH, N_FFT, N_FRAMES, N_SAMPLES, SAMPLE_RATE

MIN_POWER = 1e-10  # mel power clamp before the log
DYNAMIC_RANGE = 8.0  # log10 power kept below each signal's peak


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    # Slaney's scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above.
    f = np.asarray(f, dtype=np.float64)
    lin = f / (200.0 / 3)
    log = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(f >= 1000.0, log, lin)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    lin = m * (200.0 / 3)
    log = 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0))
    return np.where(m >= 15.0, log, lin)


@lru_cache(maxsize=8)
def mel_filterbank(n_mels: int, sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT) -> np.ndarray:
    """Triangular mel filters [n_mels, n_fft//2 + 1], area-normalised (Slaney), float32."""
    if n_mels <= 0:
        raise ValueError(f"n_mels must be positive, got {n_mels}")
    fft_freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    mel_pts = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sample_rate / 2), n_mels + 2))
    widths = np.diff(mel_pts)
    ramps = mel_pts[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_pts[2:] - mel_pts[:-2]))[:, None]
    return weights.astype(np.float32)


_FILTERS: dict[tuple[int, str], Tensor] = {}
_WINDOWS: dict[str, Tensor] = {}


def _filters(n_mels: int, device: torch.device) -> Tensor:
    key = (n_mels, str(device))
    if key not in _FILTERS:
        _FILTERS[key] = torch.from_numpy(mel_filterbank(n_mels)).to(device)
    return _FILTERS[key]


def _window(device: torch.device) -> Tensor:
    key = str(device)
    if key not in _WINDOWS:
        _WINDOWS[key] = torch.hann_window(N_FFT, device=device)
    return _WINDOWS[key]


def log_mel_spectrogram(
    audio: np.ndarray | Tensor,
    n_mels: int = 80,
    *,
    padding: int = 0,
    device: str | torch.device | None = None,
) -> Tensor:
    """16 kHz mono audio [samples] (or a batch [B, samples]) -> log-mel [n_mels, frames] ([B, n_mels, frames]).

    ``padding`` zeros are appended first (long-form transcription appends 30 s so the last window is whole).
    Values are log10 power, floored at 8 below each signal's maximum and scaled to about [-1, 1].
    """
    x = torch.as_tensor(audio)
    if device is not None:
        x = x.to(device)
    if x.dim() not in (1, 2) or x.is_complex():
        raise ValueError(
            f"audio must be real samples [samples] or [batch, samples], got shape {tuple(x.shape)}"
        )
    if padding < 0:
        raise ValueError(f"padding must be >= 0 samples, got {padding}")
    x = x.float()
    if padding > 0:
        x = F.pad(x, (0, padding))
    # The STFT reflects N_FFT // 2 samples at each edge, which needs more samples than that.
    if x.shape[-1] <= N_FFT // 2:
        raise ValueError(
            f"audio has {x.shape[-1]} samples (with padding); the log-mel needs more than {N_FFT // 2}"
        )
    return normalize_log_mel(log_mel_power(x, n_mels))


def log_mel_power(x: Tensor, n_mels: int, *, center: bool = True) -> Tensor:
    """float32 samples [..., samples] -> log10 mel power [..., n_mels, frames], clamped at ``MIN_POWER`` but not yet
    floored or scaled (``normalize_log_mel``). ``center``: frames centred on every HOP_LENGTH-th sample, the edges
    reflected, the last frame dropped (Whisper's framing); False: frames of N_FFT samples from the first sample
    on, nothing padded (a slice of a longer signal, as ``StreamingLogMel`` computes)."""
    stft = torch.stft(x, N_FFT, HOP_LENGTH, window=_window(x.device), center=center, return_complex=True)
    power = (stft[..., :-1] if center else stft).abs() ** 2
    mel = _filters(n_mels, x.device) @ power
    return torch.clamp(mel, min=MIN_POWER).log10()


def normalize_log_mel(log_spec: Tensor, frames: Tensor | None = None) -> Tensor:
    """``log_mel_power``'s output -> the encoder's input: floored at DYNAMIC_RANGE below the signal's peak, scaled
    to about [-1, 1]. ``frames`` [...] (int, optional): each signal's own frame count where signals of different
    lengths were transformed in one batch, their peaks taken over those frames only."""
    if frames is None:
        peak = log_spec.amax(dim=(-2, -1), keepdim=True)
    else:
        own = torch.arange(log_spec.shape[-1], device=log_spec.device) < frames[..., None]
        peak = log_spec.masked_fill(~own[..., None, :], -math.inf).amax(dim=(-2, -1), keepdim=True)
    log_spec = torch.maximum(log_spec, peak - DYNAMIC_RANGE)
    return (log_spec + 4.0) / 4.0


def silence_level(mel: Tensor) -> Tensor:
    """The value ``log_mel_spectrogram`` gives a frame of pure silence in a signal whose log-mel is ``mel``
    [..., n_mels, frames] (one per signal, shaped [..., 1, 1]): silence's power sits at the ``MIN_POWER``
    clamp, floored like every frame at ``DYNAMIC_RANGE`` below the signal's peak. A window's silent tail can be
    filled with it instead of transformed."""
    peak = mel.amax(dim=(-2, -1), keepdim=True) * 4.0 - 4.0  # undo the scaling above
    return (torch.clamp(peak - DYNAMIC_RANGE, min=math.log10(MIN_POWER)) + 4.0) / 4.0


def fill_silence(head: Tensor, frames: int) -> Tensor:
    """A window's normalised log-mel [..., n_mels, frames] from ``head``, the frames of its audio (and one FFT
    window after it), the rest filled with ``silence_level``: the values the whole zero-padded window has."""
    if head.shape[-1] == frames:
        return head
    mel = silence_level(head).expand(*head.shape[:-1], frames).clone()
    mel[..., : head.shape[-1]] = head
    return mel


def pad_or_trim(x: Tensor, length: int = N_FRAMES, *, axis: int = -1) -> Tensor:
    """Zero-pad or cut ``x`` along ``axis`` to exactly ``length`` (mel frames, or samples with N_SAMPLES)."""
    n = x.shape[axis]
    if n > length:
        return x.narrow(axis, 0, length)
    if n < length:
        pad = [0, 0] * (x.dim() - 1 - (axis % x.dim())) + [0, length - n]
        return F.pad(x, pad)
    return x


__all__ = ["N_SAMPLES", "log_mel_spectrogram", "mel_filterbank", "pad_or_trim"]
