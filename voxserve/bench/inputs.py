"""Benchmark inputs: windows of real speech cut from 16 kHz WAV files, and their log-mel features.

WAVs are read with the standard library's ``wave`` module (no PyAV), so the benchmark runs on machines with only
torch and numpy. Clips are concatenated in name order and cut into consecutive windows, so every window is
different real speech; with fewer clips than needed the sequence wraps around.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..audio.features import log_mel_spectrogram, pad_or_trim
from ..config import N_SAMPLES, SAMPLE_RATE
from .weights import BenchError


def read_wav_16k(path: Path) -> np.ndarray:
    """A 16 kHz mono 16-bit PCM WAV -> float32 samples in [-1, 1]."""
    try:
        with wave.open(str(path)) as w:
            rate, channels, width = w.getframerate(), w.getnchannels(), w.getsampwidth()
            frames = w.readframes(w.getnframes())
    except (OSError, EOFError, wave.Error) as e:
        raise BenchError(f"{path}: not a readable WAV file ({e})") from None
    if (rate, channels, width) != (SAMPLE_RATE, 1, 2):
        raise BenchError(
            f"{path}: the benchmark reads 16 kHz mono 16-bit WAV, got {rate} Hz, {channels} channel(s), "
            f"{8 * width}-bit"
        )
    return np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768.0


def speech_clips(folder: Path) -> list[np.ndarray]:
    """Every ``*.wav`` under ``folder`` (recursively, in path order), as float32 16 kHz samples."""
    if not folder.is_dir():
        raise BenchError(f"no audio folder at {folder}; pass --audio DIR with 16 kHz mono WAV files")
    paths = sorted(folder.rglob("*.wav"))
    if not paths:
        raise BenchError(f"{folder}: no .wav files; pass --audio DIR with 16 kHz mono WAV files")
    return [read_wav_16k(p) for p in paths]


def speech_windows(clips: list[np.ndarray], seconds: float, n: int, *, start: int = 0) -> list[np.ndarray]:
    """``n`` windows of ``seconds`` each, cut one after another from the clips joined end to end, beginning
    ``start`` windows in (so different suites can take different speech)."""
    if n < 1 or seconds <= 0:
        raise BenchError(f"need at least one window of positive length, got n={n}, seconds={seconds}")
    joined = np.concatenate(clips)
    if joined.size == 0:
        raise BenchError("the audio clips are empty")
    size = round(seconds * SAMPLE_RATE)
    total = (start + n) * size
    repeated = np.tile(joined, -(-total // joined.size))  # wrap around when the clips are too short
    return [repeated[(start + i) * size : (start + i + 1) * size].copy() for i in range(n)]


def features(audio: list[np.ndarray], n_mels: int, device: torch.device) -> Tensor:
    """Audio windows (each at most 30 s) -> log-mel [B, n_mels, 3000] float32 on ``device``.

    Each window is zero-padded to 30 s first, as every Whisper implementation feeds the encoder; the copy to
    the device and the spectrogram are part of what the benchmark times.
    """
    batch = torch.from_numpy(np.stack(audio)).to(device, non_blocking=True)
    return log_mel_spectrogram(pad_or_trim(batch, N_SAMPLES), n_mels)
