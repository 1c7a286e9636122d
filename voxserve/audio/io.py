"""Decode audio files and uploads (paths, bytes, file objects) to mono float32 at the model's sample rate.

PyAV (FFmpeg's libraries, no subprocess) demuxes and decodes frame by frame; frames are mixed to mono in
blocks of a few seconds and fed to ``StreamResampler``, so an hour of audio never sits in memory at its source
rate and a long file is refused as soon as it passes ``max_duration``. Every input that cannot be used raises
one of the typed ``AudioError``s (see ``errors.py``) with a message naming the source; a missing path raises
``FileNotFoundError``. PyAV is imported on first use, so the rest of ``voxserve.audio`` works without it, and
without it 16-bit PCM WAV still decodes (the standard library's ``wave``; the GPU machine has no PyAV).
"""

from __future__ import annotations

import errno
import io
import os
import wave
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from . import sniff
from .errors import AudioError, AudioTooLongError, CorruptAudioError, EmptyAudioError, UnsupportedAudioError
from .raw import decode_g711, decode_pcm16
from .resample import StreamResampler

if TYPE_CHECKING:
    import av

AudioSource = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO

# Demuxers FFmpeg may pick. Everything else (images, playlists, concat lists, subtitle and raw formats) is
# refused before it reads anything: an HLS playlist in an upload would otherwise make FFmpeg open the files
# and URLs it names.
_DEMUXERS = (
    "wav,w64,flac,mp3,ogg,mov,matroska,aac,aiff,caf,au,wv,ape,ac3,eac3,amr,amrnb,amrwb,asf,mpegts,mpeg,avi"
)
SUPPORTED = "WAV, FLAC, MP3, Ogg (Opus, Vorbis), M4A/MP4 (AAC), WebM/Matroska, AIFF, CAF, WMA, AMR, AC-3"

# Demuxers whose stated duration comes from the file's structure (sample counts, sizes, final timestamps),
# so decoding much less than it means the file is cut or damaged. MP3 joins them only with a Xing/Info header.
_EXACT_LENGTH = {"wav", "w64", "flac", "ogg", "mov", "matroska", "aiff", "caf"}


# Encoder delay and padding make stated and decoded lengths differ by some milliseconds, never by more than
# this (in seconds, of a stated length ``s``).
def _slack(s: float) -> float:
    return 0.1 + 0.002 * s


_BLOCK_S = 8.0  # seconds of source audio mixed and resampled at a time
_BAD_PACKETS = 2  # isolated undecodable packets tolerated (plus 1 % of packets), as players do


@dataclass
class _Source:
    name: str  # for messages: the path as given, the file object's name, or "uploaded bytes"
    target: BinaryIO  # what FFmpeg reads
    read_at: sniff.ReadAt
    size: int


def _bytes_source(data: bytes, name: str) -> _Source:
    if not data:
        raise EmptyAudioError(f"{name}: no audio data (0 bytes)")
    return _Source(name, io.BytesIO(data), lambda o, n: data[o : o + n], len(data))


def _seekable_reader(f: BinaryIO) -> sniff.ReadAt:
    def read_at(offset: int, n: int) -> bytes:
        where = f.tell()
        try:
            f.seek(offset)
            return f.read(n)
        finally:
            f.seek(where)

    return read_at


@contextmanager
def _open_source(source: AudioSource) -> Iterator[_Source]:
    if isinstance(source, bytes | bytearray | memoryview):
        yield _bytes_source(bytes(source), "uploaded bytes")
    elif isinstance(source, str | os.PathLike):
        path = os.fsdecode(source)
        if not os.path.exists(path):
            raise FileNotFoundError(errno.ENOENT, "audio file not found", path)
        if os.path.isdir(path):
            raise UnsupportedAudioError(f"{path}: is a directory, not an audio file")
        # Opened here rather than handed to FFmpeg as a URL: a path is only ever a local file.
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise EmptyAudioError(f"{path}: the file is empty (0 bytes)")
            yield _Source(path, f, _seekable_reader(f), size)
    elif isinstance(source, io.TextIOBase):
        raise TypeError("audio file objects must be opened in binary mode ('rb')")
    elif hasattr(source, "read"):
        name = getattr(source, "name", None)
        name = name if isinstance(name, str) and name else "uploaded file"
        seekable = getattr(source, "seekable", lambda: False)()
        if not seekable or source.tell() != 0:
            # FFmpeg seeks in absolute offsets and needs to look back while probing: keep the bytes instead.
            yield _bytes_source(source.read(), name)
            return
        size = source.seek(0, os.SEEK_END)
        source.seek(0)
        if size == 0:
            raise EmptyAudioError(f"{name}: no audio data (0 bytes)")
        yield _Source(name, source, _seekable_reader(source), size)
    else:
        raise TypeError(
            f"audio source must be a path, bytes or a binary file object, got {type(source).__name__}"
        )


# Sample formats as FFmpeg names them (without the planar "p"): dtype offset and scale to [-1, 1).
_SCALES = {"u8": (128.0, 1 / 128), "s16": (0.0, 1 / 2**15), "s32": (0.0, 1 / 2**31), "s64": (0.0, 1 / 2**63)}


class _MonoSink:
    """Collects decoded frames, mixes them to mono a block at a time and resamples them as a stream."""

    def __init__(self, name: str, sample_rate: int, max_duration: float | None) -> None:
        self.name, self.sample_rate, self.max_duration = name, sample_rate, max_duration
        self._done = 0.0  # seconds decoded at earlier sample rates (a stream may change rate)
        self._samples = 0  # samples decoded at the current rate
        self._pending: list[np.ndarray] = []
        self._pending_n = 0
        self._shape: tuple[str, int, int] | None = None  # (sample format, channels, rate) of pending frames
        self._resampler: StreamResampler | None = None
        self._out: list[np.ndarray] = []

    def add(self, frame: av.AudioFrame) -> None:
        shape = (frame.format.name, len(frame.layout.channels), frame.sample_rate)
        if shape != self._shape:
            self._mix()
            if self._shape is not None and shape[2] != self._shape[2]:
                self._out.append(self._resampler.flush())
                self._done, self._samples = self.seconds, 0
            if self._shape is None or shape[2] != self._shape[2]:
                self._resampler = StreamResampler(shape[2], self.sample_rate)
            self._shape = shape
        self._pending.append(frame.to_ndarray())
        self._pending_n += frame.samples
        self._samples += frame.samples
        if self.max_duration is not None and self.seconds > self.max_duration:
            raise AudioTooLongError(
                f"{self.name}: audio is longer than the {self.max_duration:g} s limit "
                f"(stopped decoding at {self.seconds:.1f} s)",
                limit=self.max_duration,
            )
        if self._pending_n >= _BLOCK_S * frame.sample_rate:
            self._mix()

    @property
    def seconds(self) -> float:
        """Audio decoded so far, in seconds at the source rate."""
        return self._done + (self._samples / self._shape[2] if self._shape else 0.0)

    def _mix(self) -> None:
        if not self._pending:
            return
        fmt, channels, _ = self._shape
        planar = fmt.endswith("p")
        base = fmt[:-1] if planar else fmt
        x = np.concatenate(self._pending, axis=1)
        x = x if planar else x.reshape(-1, channels).T  # packed frames interleave the channels
        offset, scale = _SCALES.get(base, (0.0, 1.0))
        mono = x[0].astype(np.float32) if channels == 1 else x.sum(axis=0, dtype=np.float32)
        if offset:
            mono -= offset * channels
        mono *= scale / channels
        self._out.append(self._resampler.push(mono))
        self._pending, self._pending_n = [], 0

    def finish(self) -> np.ndarray:
        self._mix()
        if self._resampler is not None:
            self._out.append(self._resampler.flush())
        if not self._out:
            return np.zeros(0, np.float32)
        return np.concatenate(self._out).astype(np.float32, copy=False)


def _stated_seconds(
    container: av.container.InputContainer, stream: av.AudioStream, src: _Source
) -> float | None:
    """The duration the file states, where its structure makes it exact (see _EXACT_LENGTH), else None."""
    names = set(container.format.name.split(","))
    exact = bool(names & _EXACT_LENGTH) or ("mp3" in names and sniff.mp3_declares_length(src.read_at))
    if not exact:
        return None
    if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
        return float(stream.duration * stream.time_base)
    if container.duration is not None and container.duration > 0:
        return container.duration / 1_000_000
    return None


_NEEDS_PYAV = "needs PyAV (pip install av); without it only 16-bit PCM WAV decodes"


def _decode(src: _Source, sample_rate: int, max_duration: float | None) -> np.ndarray:
    kind = sniff.audio_kind(src.read_at)
    try:
        import av
    except ImportError as e:  # the GPU machine: raw pcm16/G.711, PCM WAV and resampling still work there
        if kind != "WAV":
            raise RuntimeError(f"decoding audio files {_NEEDS_PYAV}") from e
        av = None
    cut = sniff.truncation(kind, src.read_at, src.size)
    if cut is not None:
        raise CorruptAudioError(f"{src.name}: truncated {kind} file: {cut}")
    if av is None:
        return _decode_pcm_wav(src, sample_rate, max_duration)
    try:
        container = av.open(
            src.target, "r", options={"format_whitelist": _DEMUXERS}, metadata_errors="replace"
        )
    except av.FFmpegError as e:
        if kind is not None:
            raise CorruptAudioError(
                f"{src.name}: looks like {kind} but cannot be opened; it is truncated or corrupt ({e.strerror})"
            ) from None
        raise UnsupportedAudioError(
            f"{src.name}: not audio in a supported format (supported: {SUPPORTED})"
        ) from None
    with container:
        stream = next((s for s in container.streams if s.type == "audio"), None)
        if stream is None:
            found = ", ".join(sorted({s.type for s in container.streams})) or "nothing"
            raise UnsupportedAudioError(f"{src.name}: has no audio stream (found: {found})")
        fmt = kind or container.format.long_name
        stated = _stated_seconds(container, stream, src)
        if max_duration is not None and stated is not None and stated > max_duration + _slack(max_duration):
            raise AudioTooLongError(
                f"{src.name}: audio is {stated:.1f} s long, more than the {max_duration:g} s limit",
                limit=max_duration,
            )
        sink = _MonoSink(src.name, sample_rate, max_duration)
        packets, bad, reason = _demux_decode(container, stream, sink)
    if bad > _BAD_PACKETS and bad > packets / 100:
        raise CorruptAudioError(
            f"{src.name}: corrupt {fmt} data: {bad} of {packets} packets undecodable ({reason})"
        )
    if stated is not None and sink.seconds < stated - _slack(stated):
        raise CorruptAudioError(
            f"{src.name}: truncated or corrupt {fmt} file: it states {stated:.2f} s "
            f"but only {sink.seconds:.2f} s could be decoded"
        )
    audio = sink.finish()
    if audio.size == 0:
        if bad:
            raise CorruptAudioError(f"{src.name}: corrupt {fmt} data: nothing could be decoded ({reason})")
        raise EmptyAudioError(f"{src.name}: the {fmt} file holds no audio samples")
    if not np.isfinite(audio).all():  # float formats can hold them; the model turns them into garbage text
        raise CorruptAudioError(f"{src.name}: corrupt {fmt} data: it holds NaN or infinite samples")
    return audio


def _decode_pcm_wav(src: _Source, sample_rate: int, max_duration: float | None) -> np.ndarray:
    """16-bit PCM WAV through the standard library's ``wave``, for machines without PyAV; the same limits and
    typed errors as the PyAV path."""
    try:
        with wave.open(src.target, "rb") as w:
            rate, channels, width = w.getframerate(), w.getnchannels(), w.getsampwidth()
            if width != 2:
                raise UnsupportedAudioError(f"{src.name}: {8 * width}-bit WAV {_NEEDS_PYAV}")
            if rate == 0:
                raise CorruptAudioError(f"{src.name}: corrupt WAV header: a sample rate of 0 Hz")
            # The header's length, unless it is a streamed file's placeholder (more than the file holds).
            stated = w.getnframes() / rate if w.getnframes() * width * channels <= src.size else None
            if (
                max_duration is not None
                and stated is not None
                and stated > max_duration + _slack(max_duration)
            ):
                raise AudioTooLongError(
                    f"{src.name}: audio is {stated:.1f} s long, more than the {max_duration:g} s limit",
                    limit=max_duration,
                )
            blocks, frames = [], 0
            while block := w.readframes(int(_BLOCK_S * rate)):
                frames += len(block) // (width * channels)
                if max_duration is not None and frames / rate > max_duration:
                    raise AudioTooLongError(
                        f"{src.name}: audio is longer than the {max_duration:g} s limit "
                        f"(stopped decoding at {frames / rate:.1f} s)",
                        limit=max_duration,
                    )
                blocks.append(block)
    except wave.Error as e:  # another encoding (float, A-law, extensible) or a header wave cannot follow
        raise UnsupportedAudioError(f"{src.name}: this WAV file ({e}) {_NEEDS_PYAV}") from None
    except EOFError:
        raise CorruptAudioError(f"{src.name}: truncated WAV file: its header is cut off") from None
    data = b"".join(blocks)
    data = data[: len(data) - len(data) % (width * channels)]  # a frame cut off at the end of the file
    if not data:
        raise EmptyAudioError(f"{src.name}: the WAV file holds no audio samples")
    return decode_pcm16(data, sample_rate=rate, channels=channels, target_rate=sample_rate)


def _demux_decode(
    container: av.container.InputContainer, stream: av.AudioStream, sink: _MonoSink
) -> tuple[int, int, str]:
    """Feed every decodable frame to ``sink``; returns (packets, undecodable packets, last error)."""
    import av

    packets = bad = 0
    reason = ""
    demux = container.demux(stream)
    while True:
        try:
            packet = next(demux)
        except StopIteration:
            break
        except av.FFmpegError as e:  # the container itself is damaged past this point
            bad += 1
            reason = e.strerror or str(e)
            break
        packets += 1
        try:
            frames = packet.decode()
        except av.FFmpegError as e:
            bad += 1
            reason = e.strerror or str(e)
            continue
        for frame in frames:
            sink.add(frame)
    return packets, bad, reason


def load_audio(
    source: AudioSource, *, sample_rate: int = 16000, max_duration: float | None = None
) -> np.ndarray:
    """Decode ``source`` (a path, bytes, or a binary file object) to mono float32 samples at ``sample_rate``.

    Any format FFmpeg's demuxers in ``SUPPORTED`` hold, any channel count (mono is their mean) and rate.
    ``max_duration`` (seconds) refuses longer audio with ``AudioTooLongError`` without decoding past the limit.
    Raises ``EmptyAudioError``, ``CorruptAudioError``, ``UnsupportedAudioError`` (all ``AudioError``) or
    ``FileNotFoundError`` for a path that does not exist.
    """
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int | np.integer) or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    if max_duration is not None and not max_duration > 0:
        raise ValueError(f"max_duration must be positive seconds or None, got {max_duration!r}")
    with _open_source(source) as src:
        return _decode(src, int(sample_rate), max_duration)


__all__ = [
    "SUPPORTED",
    "AudioError",
    "AudioSource",
    "AudioTooLongError",
    "CorruptAudioError",
    "EmptyAudioError",
    "UnsupportedAudioError",
    "decode_g711",
    "decode_pcm16",
    "load_audio",
]
