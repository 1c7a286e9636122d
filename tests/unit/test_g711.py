"""G.711 tables against two independent decoders (Python's audioop, FFmpeg's pcm_mulaw/pcm_alaw), and the raw
pcm16 / G.711 entry points: scaling, channel mixing, resampling, bad payloads, live telephony streams."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from voxserve.audio import (
    CorruptAudioError,
    EmptyAudioError,
    StreamResampler,
    decode_g711,
    decode_pcm16,
    resample,
)
from voxserve.audio.g711 import expand, expansion_table

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import audioop  # removed in Python 3.13; present on 3.11 and 3.12
    except ImportError:
        audioop = None

ALL_CODES = bytes(range(256))
FFMPEG_CODEC = {"mulaw": "pcm_mulaw", "alaw": "pcm_alaw"}


def ffmpeg_decode(data: bytes, law: str) -> np.ndarray:
    av = pytest.importorskip("av")  # the GPU machine has no PyAV
    ctx = av.CodecContext.create(FFMPEG_CODEC[law], "r")
    ctx.sample_rate, ctx.layout = 8000, "mono"
    return np.concatenate([f.to_ndarray()[0] for f in ctx.decode(av.Packet(data))])


def ffmpeg_encode(x: np.ndarray, law: str) -> bytes:
    """int16 samples -> G.711 codes with FFmpeg's encoder."""
    av = pytest.importorskip("av")
    ctx = av.CodecContext.create(FFMPEG_CODEC[law], "w")
    ctx.sample_rate, ctx.layout, ctx.format = 8000, "mono", "s16"
    frame = av.AudioFrame.from_ndarray(x[None], format="s16", layout="mono")
    frame.sample_rate = 8000
    return b"".join(bytes(p) for p in [*ctx.encode(frame), *ctx.encode(None)])


@pytest.mark.skipif(audioop is None, reason="audioop was removed in Python 3.13")
def test_tables_match_audioop():
    np.testing.assert_array_equal(
        expansion_table("mulaw"), np.frombuffer(audioop.ulaw2lin(ALL_CODES, 2), "<i2")
    )
    np.testing.assert_array_equal(
        expansion_table("alaw"), np.frombuffer(audioop.alaw2lin(ALL_CODES, 2), "<i2")
    )


@pytest.mark.parametrize("law", ["mulaw", "alaw"])
def test_tables_match_ffmpeg(law):
    np.testing.assert_array_equal(expand(ALL_CODES, law), ffmpeg_decode(ALL_CODES, law))


def test_known_code_points():
    mu, a = expansion_table("mulaw"), expansion_table("alaw")
    assert mu[0xFF] == 0 and mu[0x7F] == 0  # the two zero codes
    assert mu[0x00] == -32124 and mu[0x80] == 32124  # largest magnitudes: (2*15+33) * 2**7 - 33, times 4
    assert a[0xD5] == 8 and a[0x55] == -8  # smallest magnitudes: 2*0+1, times 8
    assert a[0xAA] == 32256 and a[0x2A] == -32256  # (2*15+33) * 2**6, times 8
    # Both laws are odd-symmetric (codes differ only in the sign bit) and monotone within each sign.
    for table in (mu, a):
        assert sorted(abs(int(v)) for v in table[:128]) == sorted(abs(int(v)) for v in table[128:])
    assert np.all(np.diff(mu[0x80:].astype(int)) < 0) and np.all(np.diff(mu[:0x80].astype(int)) > 0)


@pytest.mark.parametrize("law", ["mulaw", "alaw"])
def test_ffmpeg_encoded_speech_band_signal_round_trips(law):
    t = np.arange(8000) / 8000
    x = (12000 * np.sin(2 * np.pi * 440 * t) + 6000 * np.sin(2 * np.pi * 1900 * t)).astype(np.int16)
    codes = ffmpeg_encode(x, law)
    assert len(codes) == len(x)
    y = decode_g711(codes, law=law, target_rate=8000)
    np.testing.assert_array_equal(y, ffmpeg_decode(codes, law).astype(np.float32) / 32768)
    ref = x.astype(np.float32) / 32768
    snr = 10 * np.log10(np.sum(ref**2) / np.sum((y - ref) ** 2))
    assert snr > 30  # G.711's companding keeps ~38 dB for speech-level signals


def test_g711_channels_resampling_and_aliases():
    codes = np.random.default_rng(0).integers(0, 256, 1600, dtype=np.uint8).tobytes()
    linear = expand(codes, "mulaw").astype(np.float32) / 32768
    stereo = decode_g711(codes, law="ulaw", channels=2, target_rate=8000)
    np.testing.assert_allclose(stereo, linear.reshape(-1, 2).mean(axis=1), atol=1e-7)
    up = decode_g711(codes, law="PCMU")
    assert up.dtype == np.float32 and len(up) == 3200
    np.testing.assert_allclose(up, resample(linear, 8000, 16000), atol=1e-6)
    np.testing.assert_array_equal(
        decode_g711(codes, law="pcma", target_rate=8000), decode_g711(codes, law="alaw", target_rate=8000)
    )


def test_g711_bad_payloads():
    with pytest.raises(EmptyAudioError, match="G.711 mulaw data: no audio data"):
        decode_g711(b"", law="mulaw")
    with pytest.raises(CorruptAudioError, match="3 samples do not divide into whole frames of 2 channels"):
        decode_g711(b"\x00\x01\x02", law="alaw", channels=2)
    with pytest.raises(ValueError, match="unknown G.711 law"):
        decode_g711(b"\x00", law="g722")
    with pytest.raises(ValueError, match="sample_rate"):
        decode_g711(b"\x00", law="mulaw", sample_rate=0)


def test_pcm16_scaling_mixing_and_resampling():
    values = np.array([0, 1, -1, 32767, -32768, 16384], dtype="<i2")
    y = decode_pcm16(values.tobytes(), sample_rate=16000)
    np.testing.assert_array_equal(y, values.astype(np.float32) / 32768)
    stereo = decode_pcm16(bytearray(values.tobytes()), sample_rate=16000, channels=2)
    np.testing.assert_array_equal(stereo, values.reshape(-1, 2).astype(np.float32).mean(axis=1) / 32768)
    speech = (np.sin(2 * np.pi * 300 * np.arange(24000) / 24000) * 8000).astype("<i2")  # 1 s at 24 kHz
    y16 = decode_pcm16(memoryview(speech.tobytes()), sample_rate=24000)
    assert len(y16) == 16000
    np.testing.assert_allclose(y16, resample(speech.astype(np.float32) / 32768, 24000, 16000), atol=1e-6)


def test_pcm16_bad_payloads():
    with pytest.raises(EmptyAudioError, match="pcm16 data: no audio data"):
        decode_pcm16(b"", sample_rate=16000)
    with pytest.raises(CorruptAudioError, match="5 bytes is not a whole number of 16-bit samples"):
        decode_pcm16(b"\x00" * 5, sample_rate=16000)
    with pytest.raises(CorruptAudioError, match="whole frames of 2 channels"):
        decode_pcm16(b"\x00" * 6, sample_rate=16000, channels=2)
    with pytest.raises(ValueError, match="channels"):
        decode_pcm16(b"\x00\x00", sample_rate=16000, channels=0)


def test_live_telephony_stream_equals_whole_call():
    """A call arrives as 20 ms mu-law frames (160 bytes); decoding them one by one through a StreamResampler
    gives exactly the 16 kHz audio of decoding the whole call at once."""
    t = np.arange(8000 * 3) / 8000
    call = ffmpeg_encode(
        (9000 * np.sin(2 * np.pi * 350 * t) * np.sin(2 * np.pi * 0.7 * t)).astype(np.int16), "mulaw"
    )
    stream = StreamResampler(8000, 16000)
    parts = [
        stream.push(decode_g711(call[i : i + 160], law="mulaw", target_rate=8000))
        for i in range(0, len(call), 160)
    ]
    live = np.concatenate([*parts, stream.flush()])
    np.testing.assert_allclose(live, decode_g711(call, law="mulaw"), atol=1e-6)
