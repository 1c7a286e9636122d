"""Log-mel features equal openai-whisper's ``log_mel_spectrogram`` and its shipped mel filterbanks.

Audio is read with the stdlib ``wave`` module (16 kHz PCM files), so no decoder library is involved.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import ASSETS, AUDIO
from voxserve.audio.features import log_mel_spectrogram, mel_filterbank, pad_or_trim
from voxserve.config import N_FRAMES, N_SAMPLES

whisper = pytest.importorskip("whisper")

TOL = 1e-4  # max-abs, in the normalised log-mel units (about [-1, 1])


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Many small CPU ops: where other processes share the CPU, OpenMP's barriers between them cost more than
    the ops themselves, so these tests run on one thread."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        assert (w.getsampwidth(), w.getframerate(), w.getnchannels()) == (2, 16000, 1)
        return np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768


@pytest.fixture(scope="module")
def clips() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    hifi = sorted((AUDIO / "hifitts-6097" / "audio").glob("*.wav"))[1:2]
    return {
        "jfk": read_wav(AUDIO / "samples" / "jfk.wav"),
        **{p.stem: read_wav(p) for p in hifi},
        "noise": rng.standard_normal(16000 * 5).astype(np.float32) * 0.1,
        # Near-silence: the floor (max - 8) decides most of the output, the path where clamping must agree.
        "quiet": rng.standard_normal(16000 * 2).astype(np.float32) * 1e-6,
        "short": rng.standard_normal(401).astype(np.float32),
    }


@pytest.mark.parametrize("n_mels", [80, 128])
def test_filterbank_equals_whisper_assets(n_mels: int) -> None:
    ref = np.load(ASSETS / "mel_filters.npz")[f"mel_{n_mels}"]
    ours = mel_filterbank(n_mels)
    assert ours.shape == ref.shape == (n_mels, 201)
    assert ours.dtype == np.float32
    # The filters peak near 0.04; this is a match to float32 rounding, not merely "close".
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-7)


@pytest.mark.parametrize("n_mels", [80, 128])
@pytest.mark.parametrize("padding", [0, 16000, N_SAMPLES])
def test_log_mel_equals_whisper(clips, n_mels: int, padding: int) -> None:
    for name, audio in clips.items():
        ours = log_mel_spectrogram(audio, n_mels, padding=padding)
        ref = whisper.log_mel_spectrogram(torch.from_numpy(audio), n_mels, padding=padding)
        assert ours.shape == ref.shape, name
        assert ours.dtype == torch.float32
        err = (ours - ref).abs().max().item()
        assert err < TOL, f"{name}: max abs error {err}"


def test_numpy_and_tensor_inputs_agree(clips) -> None:
    audio = clips["jfk"]
    a = log_mel_spectrogram(audio)
    b = log_mel_spectrogram(torch.from_numpy(audio))
    c = log_mel_spectrogram(torch.from_numpy(audio).double())
    assert torch.equal(a, b)
    assert (a - c).abs().max().item() < TOL


@pytest.mark.parametrize("n_mels", [80, 128])
def test_batch_equals_per_item(clips, n_mels: int) -> None:
    # Items of very different loudness: each one's floor (max - 8) must be its own, not the batch's.
    items = [clips["jfk"][: 16000 * 5], clips["noise"][: 16000 * 5], clips["quiet"][: 16000 * 2]]
    items = [np.pad(x, (0, 16000 * 5 - len(x))) for x in items]
    batch = log_mel_spectrogram(np.stack(items), n_mels, padding=N_SAMPLES)
    assert batch.shape == (3, n_mels, 3500)
    for i, x in enumerate(items):
        single = log_mel_spectrogram(x, n_mels, padding=N_SAMPLES)
        assert (batch[i] - single).abs().max().item() < TOL
        ref = whisper.log_mel_spectrogram(torch.from_numpy(x), n_mels, padding=N_SAMPLES)
        assert (batch[i] - ref).abs().max().item() < TOL


def test_pad_or_trim_equals_whisper(clips) -> None:
    mel = log_mel_spectrogram(clips["jfk"], 80, padding=N_SAMPLES)
    for length in (N_FRAMES, 500):
        assert torch.equal(pad_or_trim(mel, length), whisper.pad_or_trim(mel, length))
    # Our default length is a window of mel frames (whisper's is N_SAMPLES): both called explicitly.
    short = mel[:, :700]
    assert torch.equal(pad_or_trim(short), whisper.pad_or_trim(short, N_FRAMES))
    audio = torch.from_numpy(clips["jfk"])
    assert torch.equal(pad_or_trim(audio, N_SAMPLES), whisper.pad_or_trim(audio, N_SAMPLES))
    batch = torch.stack([audio, audio])
    assert torch.equal(pad_or_trim(batch, N_SAMPLES), whisper.pad_or_trim(batch, N_SAMPLES))


@pytest.mark.parametrize(
    ("audio", "kwargs", "match"),
    [
        (np.zeros(0, np.float32), {}, "samples"),
        (np.zeros(200, np.float32), {}, "more than 200"),
        (np.zeros((2, 2, 1000), np.float32), {}, "shape"),
        (np.zeros(1000, np.complex64), {}, "real"),
        (np.zeros(1000, np.float32), {"padding": -1}, "padding"),
    ],
    ids=["empty", "too-short", "3d", "complex", "negative-padding"],
)
def test_bad_audio_raises_value_error(audio, kwargs, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        log_mel_spectrogram(audio, **kwargs)


def test_short_audio_becomes_valid_with_padding() -> None:
    mel = log_mel_spectrogram(np.zeros(100, np.float32), 80, padding=N_SAMPLES)
    ref = whisper.log_mel_spectrogram(torch.zeros(100), 80, padding=N_SAMPLES)
    assert mel.shape == ref.shape
    assert (mel - ref).abs().max().item() < TOL
