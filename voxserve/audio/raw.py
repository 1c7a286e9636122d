"""Headerless audio payloads: little-endian 16-bit PCM and G.711 telephony codes, to mono float32.

These come from realtime streams (OpenAI-style ``pcm16`` at 24 kHz, SIP/RTP telephony at 8 kHz), where the
format is agreed out of band, so nothing is probed: the caller states rate and channel count. Decoding is pure
numpy plus the torch resampler, and works without PyAV. For a live stream, decode each chunk with
``target_rate`` equal to its own rate and feed the samples to a ``StreamResampler``.
"""

from __future__ import annotations

import numpy as np

from .errors import CorruptAudioError, EmptyAudioError
from .g711 import LAWS, expand
from .resample import resample

RawBytes = bytes | bytearray | memoryview


def _check(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _mono(samples: np.ndarray, channels: int, what: str) -> np.ndarray:
    """int16 interleaved [frames * channels] -> float32 mono (mean of channels) in [-1, 1)."""
    if samples.size % channels:
        raise CorruptAudioError(
            f"{what}: {samples.size} samples do not divide into whole frames of {channels} channels"
        )
    if channels == 1:
        return samples.astype(np.float32) * np.float32(1 / 32768)
    mixed = samples.reshape(-1, channels).sum(axis=1, dtype=np.float32)
    return mixed * np.float32(1 / (32768 * channels))


def decode_pcm16(
    data: RawBytes, *, sample_rate: int, channels: int = 1, target_rate: int = 16000
) -> np.ndarray:
    """Raw little-endian int16 PCM (interleaved when ``channels`` > 1) -> mono float32 at ``target_rate``."""
    for name, value in (("sample_rate", sample_rate), ("channels", channels), ("target_rate", target_rate)):
        _check(name, value)
    what = "pcm16 data"
    n = memoryview(data).nbytes
    if n == 0:
        raise EmptyAudioError(f"{what}: no audio data (0 bytes)")
    if n % 2:
        raise CorruptAudioError(f"{what}: {n} bytes is not a whole number of 16-bit samples")
    samples = np.frombuffer(data, dtype="<i2")
    return resample(_mono(samples, channels, what), sample_rate, target_rate)


def decode_g711(
    data: RawBytes, *, law: str, sample_rate: int = 8000, channels: int = 1, target_rate: int = 16000
) -> np.ndarray:
    """G.711 codes (``law`` "mulaw" or "alaw"; also "ulaw", "pcmu", "pcma") -> mono float32 at ``target_rate``."""
    for name, value in (("sample_rate", sample_rate), ("channels", channels), ("target_rate", target_rate)):
        _check(name, value)
    if str(law).lower() not in LAWS:
        raise ValueError(f"unknown G.711 law {law!r}; expected 'mulaw' or 'alaw'")
    what = f"G.711 {law} data"
    if memoryview(data).nbytes == 0:
        raise EmptyAudioError(f"{what}: no audio data (0 bytes)")
    return resample(_mono(expand(data, law), channels, what), sample_rate, target_rate)


__all__ = ["decode_g711", "decode_pcm16"]
