"""StreamingLogMel: a growing signal's log-mel from kept frames equals its whole transform, and each call
transforms only the frames after the kept ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from voxserve.audio import streaming_mel
from voxserve.audio.features import log_mel_power
from voxserve.audio.streaming_mel import StreamingLogMel
from voxserve.config import HOP_LENGTH, N_FFT

SIGNAL = np.random.default_rng(0).standard_normal(16000 * 6).astype(np.float32) * 0.1


def _window(n: int, samples: int) -> torch.Tensor:
    """The first ``n`` samples of the signal, then zeros up to ``samples`` (at least n)."""
    x = torch.zeros(samples)
    x[:n] = torch.from_numpy(SIGNAL[:n])
    return x


@pytest.mark.parametrize("after", [0, 100, N_FFT, 3000], ids=lambda a: f"zeros{a}")
def test_kept_frames_equal_the_whole_transform(after):
    """Growing (by a hop, by less, by a lot), with zeros after the signal or none (a window it fills)."""
    kept = StreamingLogMel()
    for n in (400, 401, 1000, 3200, 3201, 3360, 8000, 16000, 16001, 30000, 48000, 95000):
        x = _window(n, n + after)
        torch.testing.assert_close(kept.log_power(x, n, 80), log_mel_power(x, 80), atol=1e-5, rtol=0)


def test_a_shorter_signal_after_a_longer_one_uses_only_frames_inside_it():
    """A final can end before the partial made just before it: frames that reach past its end are not
    reused, and the longer signal's frames stay kept."""
    kept = StreamingLogMel()
    for n in (16000, 48000, 30000, 30000, 60000, 20000):
        x = _window(n, n + N_FFT)
        torch.testing.assert_close(kept.log_power(x, n, 80), log_mel_power(x, 80), atol=1e-5, rtol=0)


def test_another_mel_count_starts_over():
    kept = StreamingLogMel()
    x = _window(16000, 16400)
    kept.log_power(x, 16000, 80)
    torch.testing.assert_close(kept.log_power(x, 16000, 128), log_mel_power(x, 128), atol=1e-5, rtol=0)


def test_each_call_transforms_only_the_frames_after_the_kept_ones(monkeypatch):
    transformed: list[int] = []

    def counting(x, n_mels, *, center=True):
        transformed.append(x.shape[-1])
        return log_mel_power(x, n_mels, center=center)

    monkeypatch.setattr(streaming_mel, "log_mel_power", counting)
    kept = StreamingLogMel()
    step = 3200  # 0.2 s partials
    for n in range(16000, 16000 * 6, step):
        kept.log_power(_window(n, n + N_FFT), n, 80)
    assert transformed[0] == 16000 + N_FFT  # the first call transforms its whole window
    # later: the new samples, the frames next to the old end (not yet inside it) and the padding after
    assert max(transformed[1:]) <= step + 2 * N_FFT + HOP_LENGTH, transformed
