"""resample and StreamResampler: frequency and amplitude kept, aliasing and images removed, agreement with
FFmpeg's resampler on real speech, chunked streaming equal to one-shot, numpy/torch/batched/CUDA inputs.

PyAV is imported only by the test that compares with FFmpeg: the GPU machine has no PyAV and runs the rest.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import AUDIO
from voxserve.audio import StreamResampler, resample


def tone(freq: float, rate: int, seconds: float = 2.0, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(round(rate * seconds)) / rate)).astype(np.float32)


def middle(y: np.ndarray) -> np.ndarray:
    """The middle half: away from the start and end, where the filter sees the signal begin and stop."""
    return y[len(y) // 4 : 3 * len(y) // 4]


def peak_frequency(y: np.ndarray, rate: int) -> float:
    """Spectrum peak, refined by a parabola through the log magnitudes around it."""
    s = np.log(np.abs(np.fft.rfft(y * np.hanning(len(y)))) + 1e-20)
    k = int(np.argmax(s))
    a, b, c = s[k - 1 : k + 2]
    return (k + 0.5 * (a - c) / (a - 2 * b + c)) * rate / len(y)


def gain_db(x: np.ndarray, y: np.ndarray) -> float:
    return float(20 * np.log10(middle(y).std() / middle(x).std()))


@pytest.mark.parametrize(("orig", "target"), [(44100, 16000), (8000, 16000), (48000, 16000), (22050, 16000)])
def test_1khz_tone_keeps_frequency_and_amplitude(orig, target):
    y = resample(tone(1000, orig), orig, target)
    assert len(y) == 2 * target
    assert abs(peak_frequency(middle(y), target) - 1000) < 10  # within 1 %
    assert abs(np.sqrt(2) * middle(y).std() / 0.5 - 1) < 0.01


# Tones from just at the new Nyquist frequency up to near the old one: each would alias into the new band.
ALIASING = [
    (orig, 16000, round(above * 8000))
    for orig in (44100, 48000, 22050, 24000)
    for above in (1.0, 1.05, 1.3, 1.8, 2.7)
    if above * 8000 < 0.95 * orig / 2
]


@pytest.mark.parametrize(("orig", "target", "freq"), ALIASING)
def test_energy_above_the_new_nyquist_is_removed(orig, target, freq):
    x = tone(freq, orig)
    assert gain_db(x, resample(x, orig, target)) < -40


@pytest.mark.parametrize(("orig", "target"), [(8000, 16000), (16000, 44100), (11025, 16000)])
@pytest.mark.parametrize("freq", [1000, 3000])
def test_upsampling_leaves_no_images(orig, target, freq):
    y = middle(resample(tone(freq, orig), orig, target))
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    freqs = np.fft.rfftfreq(len(y), 1 / target)
    image = spectrum[freqs > orig / 2].max()  # images of the tone would appear above the old Nyquist
    assert 20 * np.log10(image / spectrum.max()) < -40


def test_pass_band_is_flat_to_90_percent_of_the_lower_nyquist():
    for orig, target in [(44100, 16000), (8000, 16000)]:
        x = tone(0.9 * min(orig, target) / 2, orig)
        assert abs(gain_db(x, resample(x, orig, target))) < 0.05


def pyav_resample(x: np.ndarray, orig: int, target: int) -> np.ndarray:
    import av

    r = av.AudioResampler(format="flt", layout="mono", rate=target)
    frame = av.AudioFrame.from_ndarray(x[None], format="flt", layout="mono")
    frame.sample_rate = orig
    return np.concatenate([f.to_ndarray()[0] for f in [*r.resample(frame), *r.resample(None)]])


def band_limited(y: np.ndarray, rate: int, top: float) -> np.ndarray:
    spectrum = np.fft.rfft(y)
    spectrum[np.fft.rfftfreq(len(y), 1 / rate) > top] = 0
    return np.fft.irfft(spectrum, len(y))


def snr_db(ref: np.ndarray, x: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(ref**2) / np.sum((x - ref) ** 2)))


@pytest.mark.parametrize("target", [16000, 8000, 44100])
def test_agrees_with_ffmpeg_resampler_on_real_speech(target):
    av = pytest.importorskip("av")
    with av.open(str(AUDIO / "samples" / "LJ001-0001.flac")) as c:  # 22.05 kHz speech, energy up to 11 kHz
        x = np.concatenate([f.to_ndarray()[0] for f in c.decode(audio=0)]).astype(np.float32) / 32768
    ours, theirs = resample(x, 22050, target), pyav_resample(x, 22050, target)
    n = min(len(ours), len(theirs))
    assert abs(len(ours) - len(theirs)) <= 1
    ours, theirs = ours[:n], theirs[:n]
    # Over the whole band the two differ where their filters do: FFmpeg's (cutoff 0.97 of Nyquist, short
    # filter) lets through and aliases what ours (flat to 0.9, stop band from 1.0) removes.
    assert snr_db(theirs, ours) > 28
    # Below 80 % of the lower Nyquist frequency both are transparent and agree closely.
    top = 0.8 * min(22050, target) / 2
    assert snr_db(band_limited(theirs, target, top), band_limited(ours, target, top)) > 60


def test_equal_rates_are_identity_and_lengths_round_up():
    x = np.random.default_rng(0).standard_normal(1001).astype(np.float32)
    assert resample(x, 16000, 16000) is x
    assert len(resample(x, 16000, 44100)) == -(-1001 * 441 // 160)
    assert len(resample(x, 44100, 16000)) == -(-1001 * 160 // 441)
    assert resample(np.zeros(0, np.float32), 8000, 16000).shape == (0,)
    dc = resample(np.full(8000, 0.5, np.float32), 8000, 16000)
    np.testing.assert_allclose(middle(dc), 0.5, atol=1e-5)


def test_types_dtypes_and_batches():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 4410)).astype(np.float32)
    y = resample(x, 44100, 16000)
    assert isinstance(y, np.ndarray) and y.dtype == np.float32 and y.shape == (2, 3, 1600)
    for i in range(2):
        for j in range(3):
            np.testing.assert_allclose(y[i, j], resample(x[i, j], 44100, 16000), atol=1e-6)
    t = resample(torch.from_numpy(x), 44100, 16000)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    np.testing.assert_allclose(t.numpy(), y, atol=1e-6)
    assert resample(x.astype(np.float64), 44100, 16000).dtype == np.float64
    half = resample(torch.from_numpy(x).half(), 44100, 16000)
    assert half.dtype == torch.float16
    np.testing.assert_allclose(half.float().numpy(), y, atol=1e-2)


def test_bad_arguments():
    x = np.zeros(100, np.float32)
    with pytest.raises(ValueError, match="orig_rate"):
        resample(x, 0, 16000)
    with pytest.raises(ValueError, match="target_rate"):
        resample(x, 16000, 16000.5)
    with pytest.raises(TypeError, match="floating-point"):
        resample(np.zeros(100, np.int16), 8000, 16000)
    with pytest.raises(TypeError, match="numpy array or torch tensor"):
        resample([0.0] * 100, 8000, 16000)
    with pytest.raises(ValueError, match="1-D"):
        StreamResampler(8000, 16000).push(np.zeros((2, 10), np.float32))


@pytest.mark.parametrize(
    ("orig", "target"),
    [(8000, 16000), (24000, 16000), (44100, 16000), (16000, 16000), (11025, 16000), (16000, 8000)],
)
def test_stream_equals_one_shot(orig, target):
    rng = np.random.default_rng(orig + target)
    x = rng.standard_normal(orig * 2 + 37).astype(np.float32)
    stream = StreamResampler(orig, target)
    parts, i = [], 0
    while i < len(x):
        n = int(rng.integers(0, 2000))  # includes empty chunks and chunks shorter than the filter
        parts.append(stream.push(x[i : i + n]))
        i += n
    parts.append(stream.flush())
    assert all(isinstance(p, np.ndarray) and p.dtype == np.float32 for p in parts)
    np.testing.assert_allclose(np.concatenate(parts), resample(x, orig, target), atol=1e-5)
    # flush starts a new stream: the same input gives the same output again.
    again = np.concatenate([stream.push(x), stream.flush()])
    np.testing.assert_allclose(again, resample(x, orig, target), atol=1e-5)


def test_stream_output_is_prompt_and_takes_tensors():
    stream = StreamResampler(8000, 16000)  # telephony: 20 ms frames of 160 samples
    x = torch.from_numpy(tone(440, 8000, 1.0))
    outs = [stream.push(x[i : i + 160]) for i in range(0, 8000, 160)]
    assert all(isinstance(o, torch.Tensor) for o in outs)
    # After the first frame (the filter's look-ahead is 6 ms), each 20 ms frame yields 20 ms of output.
    assert all(len(o) == 320 for o in outs[1:])
    total = torch.cat([*outs, stream.flush(like=x)])
    np.testing.assert_allclose(total.numpy(), resample(x.numpy(), 8000, 16000), atol=1e-5)
    assert len(StreamResampler(8000, 16000).flush()) == 0


@pytest.mark.gpu
def test_cuda_matches_cpu():
    # cuDNN may run float32 convolutions in TF32 (its default), which rounds products to ~1e-3 relative:
    # agreement is measured as a signal-to-noise ratio, far above what matters for audio.
    x = torch.randn(4, 44100 * 3)
    cpu = resample(x, 44100, 16000)
    gpu = resample(x.cuda(), 44100, 16000)
    assert gpu.is_cuda and gpu.shape == cpu.shape
    assert snr_db(cpu.numpy(), gpu.cpu().numpy()) > 50
    stream = StreamResampler(8000, 16000)
    chunks = torch.randn(8000).cuda()
    out = torch.cat([stream.push(chunks[:3000]), stream.push(chunks[3000:]), stream.flush(like=chunks)])
    assert out.is_cuda
    assert snr_db(resample(chunks.cpu(), 8000, 16000).numpy(), out.cpu().numpy()) > 50
