"""The engine's batched log-mels (engine/mels.py) against each window's own transform."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.support import window_log_mel
from voxserve.engine.mels import batched_log_mels


def _windows() -> tuple[list[np.ndarray], list[int]]:
    """Windows of several lengths in one batch, with audio that stops well before a window's end, that reaches
    its last samples (whose reflection its own transform reads past the end), just short of the reflected span,
    a lone sample at the span's far edge, a click on a window's last sample (louder in the frame after the
    window than in any of its own frames), and a filled window whose reflection reaches past every signal."""
    rng = np.random.default_rng(3)
    noise = rng.standard_normal(160 * 800).astype(np.float32) * 0.05
    click = np.zeros(160 * 100, dtype=np.float32)
    click[-1] = 1.0
    # its last sample is the farthest one its last frame reads from the reflection
    edge = np.zeros(160 * 400 - 40, dtype=np.float32)
    edge[-1] = 1.0
    signals = [
        noise[: 160 * 100],  # fills its window
        noise[: 160 * 200 - 10],  # ends inside the reflected span
        noise[: 160 * 200 - 41],  # ends just before it
        noise[: 160 * 400 - 42],
        noise[: 160 * 300],  # a 4 s window with 3 s of audio
        click,
        noise[:1000],
        edge,
        noise,  # the longest window, filled
    ]
    frames = [100, 200, 200, 400, 400, 100, 200, 400, 800]
    return signals, frames


def test_windows_of_several_lengths_in_one_transform_equal_theirwindow_log_mel():
    """One transform at the longest window's length gives each window its own transform's log-mel: its peak
    over its own frames, the reflection past its end where its audio reaches there."""
    signals, frames = _windows()
    made = batched_log_mels(signals, frames, 80, torch.device("cpu"))
    for signal, f, mel in zip(signals, frames, made, strict=True):
        assert mel.shape == (80, f)
        torch.testing.assert_close(mel, window_log_mel(signal, f), atol=1e-5, rtol=0)


def test_a_reflection_reaching_past_every_signal_fits_the_batch():
    """A filled 1 s window beside a 2 s one holding a little more audio: the 1 s window's reflection reaches past
    the longest signal, so the samples sent must reach that far."""
    rng = np.random.default_rng(5)
    signals = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (16000, 16010)]
    made = batched_log_mels(signals, [100, 200], 80, torch.device("cpu"))
    for signal, f, mel in zip(signals, [100, 200], made, strict=True):
        torch.testing.assert_close(mel, window_log_mel(signal, f), atol=1e-5, rtol=0)


def test_windows_of_one_length_in_a_wider_batch_take_their_peaks_over_their_own_frames():
    """Windows of one length transformed at a larger ``width``: a click on a window's last sample is louder in the
    frames after the window, which must not set its peak."""
    click = np.zeros(16000, dtype=np.float32)
    click[-1] = 1.0
    (mel,) = batched_log_mels([click], [100], 80, torch.device("cpu"), width=200)
    torch.testing.assert_close(mel, window_log_mel(click, 100), atol=1e-5, rtol=0)
    assert batched_log_mels([], [], 80, torch.device("cpu")) == []


@pytest.mark.parametrize("frames", [100, 400])
def test_windows_of_one_length_are_trimmed_on_the_cpu_and_equal_theirwindow_log_mel(frames):
    """On the CPU, windows of one length whose audio stops short of their end transform only as far as their
    audio reaches (plus one FFT window), the rest filled in as silence, with the same values."""
    rng = np.random.default_rng(4)
    lengths = (160 * frames - 1000, 3000, 1, 160 * frames // 2)
    signals = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in lengths]
    made = batched_log_mels(signals, [frames] * len(signals), 80, torch.device("cpu"))
    for signal, mel in zip(signals, made, strict=True):
        torch.testing.assert_close(mel, window_log_mel(signal, frames), atol=1e-5, rtol=0)
