"""load_audio: every container and codec we accept, every input kind, every bad input, max_duration, real files.

Test files are encoded here with PyAV from an analytic signal (tones plus a chirp, all below 3.2 kHz), so the
expected 16 kHz mono waveform is the same formula evaluated at 16 kHz: no resampler is trusted to check ours.
"""

from __future__ import annotations

import io
import struct
import time
import wave
import zlib
from pathlib import Path

import av
import numpy as np
import pytest

from tests.conftest import AUDIO, JFK
from tests.support import read_wav
from voxserve.audio import (
    AudioError,
    AudioTooLongError,
    CorruptAudioError,
    EmptyAudioError,
    UnsupportedAudioError,
    load_audio,
    sniff,
)

SR = 16000
EDGE = 0.05  # seconds skipped at both ends: the abrupt start and end are broadband, the rest is not


def channel_signal(t: np.ndarray, k: int, seconds: float) -> np.ndarray:
    """Channel ``k`` of the test signal at times ``t`` (seconds); everything below 3.2 kHz."""
    if k == 0:
        chirp = np.sin(2 * np.pi * (200 * t + 1400 * t**2 / seconds))  # 200 Hz rising to 3 kHz
        return 0.4 * np.sin(2 * np.pi * 440 * t) + 0.2 * chirp
    if k == 1:
        return 0.3 * np.sin(2 * np.pi * 1000 * t + 0.5) + 0.15 * np.sin(2 * np.pi * 2500 * t)
    return 0.3 * np.sin(2 * np.pi * (300 + 250 * k) * t)


def signal(rate: int, seconds: float, channels: int) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    return np.stack([channel_signal(t, k, seconds) for k in range(channels)]).astype(np.float32)


def expected(seconds: float, channels: int, rate: int) -> np.ndarray:
    """The mono mix at 16 kHz, as many samples as resampling from ``rate`` gives."""
    return mix16(seconds, channels, -(-round(rate * seconds) * SR // rate))


def mix16(seconds: float, channels: int, n: int) -> np.ndarray:
    """``n`` samples at 16 kHz of the mean of the signal's channels."""
    t = np.arange(n) / SR
    return np.mean([channel_signal(t, k, seconds) for k in range(channels)], axis=0).astype(np.float32)


LAYOUTS = {1: "mono", 2: "stereo", 3: "3.0", 6: "5.1"}


class Sink(io.RawIOBase):
    """A write-only, non-seekable output: muxers write files as a live stream would (no length fields)."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b: bytes) -> int:
        self.data += b
        return len(b)


def encode(
    x: np.ndarray, rate: int, fmt: str, codec: str, *, sample_fmt: str | None = None, streamed: bool = False
) -> bytes:
    """[channels, samples] float32 -> the bytes of a file in container ``fmt`` written by PyAV's ``codec``."""
    layout = LAYOUTS[x.shape[0]]
    out = Sink() if streamed else io.BytesIO()
    with av.open(out, "w", format=fmt) as c:
        options = {"strict": "experimental"} if codec == "vorbis" else {}
        s = c.add_stream(codec, rate=rate, layout=layout, options=options)
        if sample_fmt:
            s.codec_context.format = sample_fmt
        frame_size = s.codec_context.frame_size or 1024
        rs = av.AudioResampler(format=s.codec_context.format, layout=layout, rate=rate, frame_size=frame_size)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(x), format="fltp", layout=layout)
        frame.sample_rate = rate
        for f in [*rs.resample(frame), *rs.resample(None)]:
            c.mux(s.encode(f))
        c.mux(s.encode(None))
    return bytes(out.data) if streamed else out.getvalue()


def snr_db(ref: np.ndarray, x: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(ref**2) / np.sum((x - ref) ** 2)))


def best_lag(ref: np.ndarray, x: np.ndarray, max_lag: int) -> tuple[int, float]:
    """The shift of ``x`` against ``ref`` (in samples) with the highest normalised correlation, and that value."""
    n = min(len(ref), len(x)) - 2 * max_lag
    a = ref[max_lag : max_lag + n]
    scores = []
    for lag in range(-max_lag, max_lag + 1):
        b = x[max_lag + lag : max_lag + lag + n]
        scores.append(float(a @ b / np.sqrt((a @ a) * (b @ b))))
    i = int(np.argmax(scores))
    return i - max_lag, scores[i]


# (container, codec, rate, channels, sample format or None, lossless)
LOSSLESS = [
    ("wav", "pcm_s16le", 8000, 1, None),
    ("wav", "pcm_s24le", 22050, 2, None),
    ("wav", "pcm_f32le", 48000, 2, None),
    ("wav", "pcm_s16le", 44100, 6, None),
    ("wav", "pcm_s32le", 16000, 3, None),
    ("flac", "flac", 44100, 2, None),
    ("flac", "flac", 8000, 1, None),
    ("flac", "flac", 48000, 2, "s32"),
]
LOSSY = [
    ("mp3", "libmp3lame", 44100, 2),
    ("mp3", "libmp3lame", 22050, 1),
    ("ogg", "libopus", 48000, 2),
    ("ipod", "aac", 44100, 2),
    ("mp4", "aac", 22050, 1),
    ("webm", "libopus", 48000, 1),
    ("matroska", "libopus", 48000, 2),
]


@pytest.mark.parametrize(("fmt", "codec", "rate", "channels", "sample_fmt"), LOSSLESS)
def test_lossless_formats_decode_to_the_exact_mono_mix(fmt, codec, rate, channels, sample_fmt):
    seconds = 1.5
    data = encode(signal(rate, seconds, channels), rate, fmt, codec, sample_fmt=sample_fmt)
    y = load_audio(data)
    ref = expected(seconds, channels, rate)
    assert y.dtype == np.float32 and y.ndim == 1
    assert len(y) == len(ref)
    k = int(EDGE * SR)
    # 16-bit quantisation alone allows ~90 dB; the resampler's pass-band ripple is what is left.
    assert snr_db(ref[k:-k], y[k:-k]) > 55


def test_8bit_wav_decodes_with_its_offset_removed():
    x = signal(11025, 1.0, 1)
    y = load_audio(encode(x, 11025, "wav", "pcm_u8"))
    ref = expected(1.0, 1, 11025)
    k = int(EDGE * SR)
    assert abs(float(y[k:-k].mean())) < 0.01  # unsigned samples centred on 128 -> zero mean
    assert snr_db(ref[k:-k], y[k:-k]) > 35  # 8-bit quantisation: ~48 dB at full scale


@pytest.mark.parametrize(("fmt", "codec", "rate", "channels"), LOSSY)
def test_lossy_formats_keep_waveform_timing_and_duration(fmt, codec, rate, channels):
    seconds = 2.0
    y = load_audio(encode(signal(rate, seconds, channels), rate, fmt, codec))
    # Encoders add priming and padding.
    assert abs(len(y) / SR - seconds) < 0.1, len(y) / SR
    ref = mix16(seconds, channels, len(y))
    lag, corr = best_lag(ref, y, max_lag=int(0.06 * SR))
    assert corr > 0.97, (lag, corr)
    # MP3 (LAME header) and Opus (pre-skip) delays are removed; the MP4 files PyAV writes carry no edit list,
    # so AAC's 1024 priming samples stay at the start, as any FFmpeg-based player would play them.
    priming = round(1024 * SR / rate) if codec == "aac" else 0
    assert abs(lag - priming) <= 1, lag
    # The strongest component of the mix (the 440 Hz tone) stays where it was.
    mid = y[int(0.3 * SR) : int(1.7 * SR)]
    spectrum = np.abs(np.fft.rfft(mid * np.hanning(len(mid))))
    assert abs(np.fft.rfftfreq(len(mid), 1 / SR)[np.argmax(spectrum)] - 440) < 2


def test_vorbis_in_ogg():
    # FFmpeg's own Vorbis encoder (the only one in PyAV's build, "experimental") takes stereo only and badly
    # distorts a second channel that differs from the first, so both channels carry the same signal here.
    x = np.repeat(signal(44100, 2.0, 1), 2, axis=0)
    y = load_audio(encode(x, 44100, "ogg", "vorbis"))
    assert abs(len(y) / SR - 2.0) < 0.1
    lag, corr = best_lag(mix16(2.0, 1, len(y)), y, max_lag=int(0.06 * SR))
    assert lag == 0 and corr > 0.97, (lag, corr)


def test_streamed_files_without_length_fields_decode_fully():
    for fmt, codec, rate in [
        ("wav", "pcm_s16le", 16000),
        ("flac", "flac", 44100),
        ("webm", "libopus", 48000),
        ("mp3", "libmp3lame", 44100),
    ]:
        y = load_audio(encode(signal(rate, 1.0, 1), rate, fmt, codec, streamed=True))
        assert abs(len(y) / SR - 1.0) < 0.05, (fmt, len(y))


def test_mp3_length_is_trusted_only_with_a_frame_count_header():
    seekable = encode(signal(44100, 1.0, 1), 44100, "mp3", "libmp3lame")
    streamed = encode(signal(44100, 1.0, 1), 44100, "mp3", "libmp3lame", streamed=True)
    tagged = b"ID3\x04\x00\x00\x00\x00\x00\x0a" + bytes(10) + seekable  # a 10-byte ID3v2 tag in front
    assert sniff.mp3_declares_length(lambda o, n: seekable[o : o + n])  # LAME's Info header
    assert sniff.mp3_declares_length(lambda o, n: tagged[o : o + n])
    assert not sniff.mp3_declares_length(lambda o, n: streamed[o : o + n])
    assert sniff.audio_kind(lambda o, n: tagged[o : o + n]) == "MP3"


@pytest.fixture(scope="module")
def flac_bytes() -> bytes:
    return encode(signal(44100, 1.0, 2), 44100, "flac", "flac")


class NonSeekable(io.RawIOBase):
    def __init__(self, data: bytes) -> None:
        self._f = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray) -> int:
        return self._f.readinto(b)


def test_bytes_paths_and_file_objects_give_the_same_samples(tmp_path: Path, flac_bytes: bytes):
    path = tmp_path / "tone.flac"
    path.write_bytes(flac_bytes)
    ref = load_audio(flac_bytes)
    with open(path, "rb") as f:
        from_file = load_audio(f)
    offset = io.BytesIO(b"xx" + flac_bytes)
    offset.seek(2)
    for y in [
        load_audio(bytearray(flac_bytes)),
        load_audio(memoryview(flac_bytes)),
        load_audio(str(path)),
        load_audio(path),
        from_file,
        load_audio(io.BytesIO(flac_bytes)),
        load_audio(io.BufferedReader(NonSeekable(flac_bytes))),
        load_audio(offset),
    ]:
        np.testing.assert_array_equal(y, ref)


def test_sample_rate_argument(flac_bytes: bytes):
    assert len(load_audio(flac_bytes, sample_rate=8000)) == 8000
    assert len(load_audio(flac_bytes, sample_rate=44100)) == 44100
    with pytest.raises(ValueError, match="sample_rate"):
        load_audio(flac_bytes, sample_rate=0)
    with pytest.raises(ValueError, match="max_duration"):
        load_audio(flac_bytes, max_duration=-1)


def png_bytes() -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    pixels = zlib.compress(b"".join(b"\x00" + bytes(range(16)) for _ in range(16)))
    header = struct.pack(">IIBBBBB", 16, 16, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def video_only_mp4() -> bytes:
    out = io.BytesIO()
    with av.open(out, "w", format="mp4") as c:
        s = c.add_stream("mpeg4", rate=10)
        s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
        for i in range(5):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), i * 40, np.uint8), format="rgb24")
            c.mux(s.encode(frame))
        c.mux(s.encode(None))
    return out.getvalue()


@pytest.mark.parametrize(
    ("data", "error", "words"),
    [
        (b"", EmptyAudioError, "0 bytes"),
        (
            b"hello, this is a text file and not audio\n" * 20,
            UnsupportedAudioError,
            "not audio in a supported format",
        ),
        (png_bytes(), UnsupportedAudioError, "not audio in a supported format"),
        (video_only_mp4(), UnsupportedAudioError, "no audio stream (found: video)"),
        # A playlist would make FFmpeg open the files it names; the demuxer allow-list refuses it.
        (
            b"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n/etc/passwd\n#EXT-X-ENDLIST\n",
            UnsupportedAudioError,
            "",
        ),
        (
            b"ffconcat version 1.0\nfile '/etc/passwd'\n",
            UnsupportedAudioError,
            "not audio in a supported format",
        ),
    ],
    ids=["empty", "text", "png", "video-only", "hls-playlist", "concat-list"],
)
def test_non_audio_bytes_raise_typed_errors_naming_the_source(data, error, words):
    with pytest.raises(error, match="uploaded bytes") as info:
        load_audio(data)
    assert words in str(info.value)


@pytest.mark.parametrize("seed", range(6))
def test_random_noise_bytes_are_refused(seed):
    data = np.random.default_rng(seed).integers(0, 256, 200_000, dtype=np.uint8).tobytes()
    start = time.perf_counter()
    with pytest.raises(AudioError, match="uploaded bytes"):
        load_audio(data)
    assert time.perf_counter() - start < 5


def test_zero_sample_file_is_empty():
    out = io.BytesIO()
    with wave.open(out, "wb") as w:  # a valid WAV header with an empty data chunk
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
    with pytest.raises(EmptyAudioError, match="uploaded bytes: the WAV file holds no audio samples"):
        load_audio(out.getvalue())


def test_bad_paths(tmp_path: Path, flac_bytes: bytes):
    missing = tmp_path / "nope.wav"
    with pytest.raises(FileNotFoundError, match="audio file not found") as info:
        load_audio(missing)
    assert str(missing) in str(info.value)
    with pytest.raises(UnsupportedAudioError, match="is a directory"):
        load_audio(tmp_path)
    (tmp_path / "empty.mp3").write_bytes(b"")
    with pytest.raises(EmptyAudioError, match=r"empty\.mp3: the file is empty"):
        load_audio(tmp_path / "empty.mp3")
    (tmp_path / "notes.txt").write_text("minutes of the meeting\n" * 50)
    with pytest.raises(UnsupportedAudioError, match=r"notes\.txt: not audio in a supported format"):
        load_audio(tmp_path / "notes.txt")
    (tmp_path / "picture.png").write_bytes(png_bytes())
    with pytest.raises(UnsupportedAudioError, match=r"picture\.png"):
        load_audio(tmp_path / "picture.png")
    with pytest.raises(EmptyAudioError, match="uploaded file"):
        load_audio(io.BytesIO())
    with open(tmp_path / "notes.txt") as text_mode, pytest.raises(TypeError, match="binary mode"):
        load_audio(text_mode)
    with pytest.raises(TypeError, match="audio source"):
        load_audio(12345)


TRUNCATABLE = [
    ("mp3", "libmp3lame", 44100),
    ("flac", "flac", 44100),
    ("ogg", "libopus", 48000),
    ("ogg", "vorbis", 44100),
    ("webm", "libopus", 48000),
    ("ipod", "aac", 44100),
    ("wav", "pcm_s16le", 16000),
]


@pytest.mark.parametrize(("fmt", "codec", "rate"), TRUNCATABLE)
@pytest.mark.parametrize("keep", [0.6, 0.02])
def test_truncated_files_are_corrupt(tmp_path: Path, fmt, codec, rate, keep):
    data = encode(signal(rate, 4.0, 2), rate, fmt, codec)
    cut = data[: int(len(data) * keep)]
    with pytest.raises(CorruptAudioError, match="uploaded bytes: .*(truncated|corrupt)"):
        load_audio(cut)
    path = tmp_path / f"cut.{fmt}"
    path.write_bytes(cut)
    with pytest.raises(CorruptAudioError, match=f"cut.{fmt}"):
        load_audio(path)


def test_damaged_middle_of_mp3_is_corrupt():
    data = bytearray(encode(signal(44100, 4.0, 2), 44100, "mp3", "libmp3lame"))
    mid = len(data) // 2
    # 8000 bytes of a 128 kbit/s stream: half a second of frames the decoder must skip.
    data[mid : mid + 8000] = np.random.default_rng(0).integers(0, 256, 8000, dtype=np.uint8).tobytes()
    with pytest.raises(CorruptAudioError, match="corrupt"):
        load_audio(bytes(data))


class CountingReader(io.BytesIO):
    """Counts the bytes FFmpeg reads, to show how much of a file was decoded."""

    read_bytes = 0

    def read(self, n: int = -1) -> bytes:
        b = super().read(n)
        self.read_bytes += len(b)
        return b

    def readinto(self, b: bytearray) -> int:
        n = super().readinto(b)
        self.read_bytes += n
        return n


@pytest.fixture(scope="module")
def long_webm_streamed() -> bytes:
    """120 s of Opus in WebM written as a live stream: no duration in the header, so only decoding can tell."""
    return encode(signal(48000, 120.0, 1) * 0.5, 48000, "webm", "libopus", streamed=True)


def test_max_duration_stops_decoding_as_soon_as_the_limit_is_passed(long_webm_streamed: bytes):
    assert av.open(io.BytesIO(long_webm_streamed)).duration is None
    reader = CountingReader(long_webm_streamed)
    with pytest.raises(AudioTooLongError, match=r"uploaded file: audio is longer than the 5 s limit") as info:
        load_audio(reader, max_duration=5)
    assert info.value.limit == 5
    assert reader.read_bytes < 0.15 * len(long_webm_streamed), (reader.read_bytes, len(long_webm_streamed))
    y = load_audio(long_webm_streamed, max_duration=130)
    assert abs(len(y) / SR - 120) < 0.05


def test_max_duration_refuses_a_stated_length_before_decoding():
    data = encode(signal(16000, 120.0, 1), 16000, "flac", "flac")
    reader = CountingReader(data)
    with pytest.raises(AudioTooLongError, match=r"audio is 120.0 s long, more than the 10 s limit"):
        load_audio(reader, max_duration=10)
    assert reader.read_bytes < 0.05 * len(data)
    assert len(load_audio(data, max_duration=120)) == 120 * SR  # exactly at the limit is allowed


# Real recordings from ../shared/data.


def test_shared_samples_decode_with_their_durations():
    jfk_wav = load_audio(AUDIO / "samples" / "jfk.wav")
    np.testing.assert_array_equal(jfk_wav, read_wav(AUDIO / "samples" / "jfk.wav"))  # 16 kHz in: untouched
    jfk_flac = load_audio(JFK)  # 44.1 kHz stereo FLAC of the same speech
    assert len(jfk_flac) == len(jfk_wav) == 11 * SR
    assert snr_db(jfk_wav, jfk_flac) > 50
    lj_mp3 = load_audio(AUDIO / "samples" / "LJ001-0001.mp3")
    lj_flac = load_audio(AUDIO / "samples" / "LJ001-0001.flac")
    with av.open(str(AUDIO / "samples" / "LJ001-0001.flac")) as c:
        seconds = c.streams.audio[0].duration * c.streams.audio[0].time_base
    assert abs(len(lj_flac) / SR - float(seconds)) < 1 / SR
    assert abs(len(lj_mp3) - len(lj_flac)) < 0.01 * SR
    lag, corr = best_lag(lj_flac, lj_mp3, 40)
    assert lag == 0 and corr > 0.99


def test_spoken_digit_8k_wav():
    path = AUDIO / "spoken-digits-8k" / "7_jackson_10.wav"
    with wave.open(str(path)) as w:
        assert w.getframerate() == 8000
        n8k = w.getnframes()
    y = load_audio(path)
    assert len(y) == 2 * n8k
    assert len(load_audio(path, sample_rate=8000)) == n8k


def test_without_pyav_the_error_says_what_is_missing(monkeypatch, flac_bytes: bytes):
    monkeypatch.setitem(__import__("sys").modules, "av", None)  # as on the GPU machine
    with pytest.raises(RuntimeError, match=r"needs PyAV \(pip install av\)"):
        load_audio(flac_bytes)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_float_wav_with_non_finite_samples_is_corrupt(value: float):
    # Such a file used to decode "fine" and come back as 15 s of garbage text ("!!!!...") from the server.
    data = np.full(1600, 0.1, "<f4")
    data[800] = value
    fmt = struct.pack("<HHIIHH", 3, 1, 16000, 16000 * 4, 4, 32)  # IEEE float, mono, 16 kHz
    body = (
        b"WAVE"
        + b"fmt "
        + struct.pack("<I", 16)
        + fmt
        + b"data"
        + struct.pack("<I", data.nbytes)
        + data.tobytes()
    )
    with pytest.raises(CorruptAudioError, match="NaN or infinite"):
        load_audio(b"RIFF" + struct.pack("<I", len(body)) + body)
