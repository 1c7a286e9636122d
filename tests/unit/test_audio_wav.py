"""load_audio without PyAV (as on the GPU machine): 16-bit PCM WAV decodes through the standard library's
``wave``, with the same limits and typed errors as the PyAV path; every other input says PyAV is needed.

PyAV is hidden with monkeypatch in every test, so this file runs whether or not it is installed.
"""

from __future__ import annotations

import importlib.util
import io
import struct
import sys
import wave

import numpy as np
import pytest

from voxserve.audio.io import (
    AudioTooLongError,
    CorruptAudioError,
    EmptyAudioError,
    UnsupportedAudioError,
    load_audio,
)
from voxserve.audio.resample import resample

SR = 16000


def pcm16_wav(samples: np.ndarray, rate: int = SR, channels: int = 1, width: int = 2) -> bytes:
    """int16 samples (interleaved when ``channels`` > 1) -> the bytes of a PCM WAV file."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return out.getvalue()


def speech_like(n: int, seed: int = 0) -> np.ndarray:
    t = np.arange(n) / SR
    rng = np.random.default_rng(seed)
    x = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(n)
    return np.round(x * 32767).astype("<i2")


@pytest.fixture
def no_pyav(monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` raises ImportError


def test_pcm16_wav_decodes_without_pyav_as_with_it(monkeypatch, tmp_path):
    samples = speech_like(SR)
    data = pcm16_wav(samples)
    path = tmp_path / "a.wav"
    path.write_bytes(data)
    with_pyav = load_audio(data) if importlib.util.find_spec("av") is not None else None
    monkeypatch.setitem(sys.modules, "av", None)
    want = samples.astype(np.float32) / 32768
    for source in (data, path, io.BytesIO(data)):
        got = load_audio(source)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want)  # 16 kHz mono in: the samples themselves
    if with_pyav is not None:
        np.testing.assert_array_equal(load_audio(data), with_pyav)


def test_stereo_at_another_rate_is_mixed_and_resampled(no_pyav):
    left, right = speech_like(8000, seed=1), speech_like(8000, seed=2)
    interleaved = np.stack([left, right], axis=1).reshape(-1)
    got = load_audio(pcm16_wav(interleaved, rate=8000, channels=2))
    mono = (left.astype(np.float32) + right.astype(np.float32)) / (2 * 32768)
    assert len(got) == 2 * 8000
    np.testing.assert_allclose(got, resample(mono, 8000, SR), atol=1e-6)
    assert len(load_audio(pcm16_wav(interleaved, rate=8000, channels=2), sample_rate=8000)) == 8000


def test_max_duration_refuses_long_wavs_without_pyav(no_pyav):
    data = pcm16_wav(speech_like(3 * SR))
    with pytest.raises(AudioTooLongError, match=r"3\.0 s long, more than the 2 s limit"):
        load_audio(data, max_duration=2.0)
    assert len(load_audio(data, max_duration=3.0)) == 3 * SR
    streamed = bytearray(data)
    streamed[40:44] = struct.pack("<I", 0xFFFFFFFF)  # a streamed file: the data length never filled in
    with pytest.raises(AudioTooLongError, match="stopped decoding"):
        load_audio(bytes(streamed), max_duration=2.0)


def test_wav_errors_without_pyav_are_typed(no_pyav):
    data = pcm16_wav(speech_like(SR))
    with pytest.raises(CorruptAudioError, match="truncated WAV file"):
        load_audio(data[: len(data) // 2])
    with pytest.raises(EmptyAudioError, match="no audio samples"):
        load_audio(pcm16_wav(np.zeros(0, "<i2")))
    with pytest.raises(UnsupportedAudioError, match=r"24-bit WAV needs PyAV \(pip install av\)"):
        load_audio(pcm16_wav(np.zeros(300, np.uint8), width=3))
    floats = bytearray(data)
    floats[20:22] = struct.pack("<H", 3)  # IEEE float: the wave module reads PCM only
    with pytest.raises(UnsupportedAudioError, match=r"needs PyAV \(pip install av\)"):
        load_audio(bytes(floats))


def test_other_formats_without_pyav_say_what_is_missing(no_pyav):
    with pytest.raises(RuntimeError, match=r"needs PyAV \(pip install av\)"):
        load_audio(b"fLaC" + bytes(100))
