"""Realtime input formats: base64 payloads of pcm16 (16 or 24 kHz) or G.711 mu-law / A-law (8 kHz), mono,
turned into 16 kHz float32 chunks with a stream resampler (no clicks at chunk boundaries)."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

import numpy as np

from ..audio.g711 import expand
from ..audio.resample import StreamResampler

# OpenAI's names; pcm16 is 24 kHz there, and 16 kHz here too when the session says so.
FORMATS = ("pcm16", "g711_ulaw", "g711_alaw")
PCM16_RATES = (16000, 24000)
TARGET_RATE = 16000


class FormatError(ValueError):
    """Audio that does not match the session's declared format."""


@dataclass(frozen=True)
class InputFormat:
    name: str = "pcm16"
    sample_rate: int = 24000

    def __post_init__(self) -> None:
        if self.name not in FORMATS:
            raise FormatError(f"input_audio_format must be one of {list(FORMATS)}, got {self.name!r}")
        if self.name == "pcm16" and self.sample_rate not in PCM16_RATES:
            raise FormatError(
                f"pcm16 input_audio_sample_rate must be 16000 or 24000, got {self.sample_rate!r}"
            )
        if self.name != "pcm16" and self.sample_rate != 8000:
            raise FormatError(
                f"{self.name} audio is 8000 Hz, got input_audio_sample_rate {self.sample_rate!r}"
            )

    @staticmethod
    def of(name: str, sample_rate: int | None = None) -> InputFormat:
        if sample_rate is not None and (isinstance(sample_rate, bool) or not isinstance(sample_rate, int)):
            raise FormatError(f"input_audio_sample_rate must be an integer, got {sample_rate!r}")
        default = 24000 if name == "pcm16" else 8000
        return InputFormat(name, default if sample_rate is None else sample_rate)

    @property
    def bytes_per_second(self) -> int:
        return self.sample_rate * (2 if self.name == "pcm16" else 1)


class ChunkDecoder:
    """One stream's decoder: payload bytes in the stream's format -> 16 kHz float32 samples."""

    def __init__(self, fmt: InputFormat) -> None:
        self.format = fmt
        self._resampler = StreamResampler(fmt.sample_rate, TARGET_RATE)

    def decode(self, data: bytes) -> np.ndarray:
        fmt = self.format
        if fmt.name == "pcm16":
            if len(data) % 2:
                raise FormatError(f"pcm16 audio must be whole 16-bit samples; got {len(data)} bytes")
            # one pass (int16 times a float32 scalar is float32): a chunk's every numpy call on the event loop
            # may wait to retake the GIL from the log-mel threads (bench/README.md, "Live streams")
            samples = np.frombuffer(data, dtype="<i2") * np.float32(1 / 32768)
        else:
            samples = expand(data, "mulaw" if fmt.name == "g711_ulaw" else "alaw").astype(np.float32)
            samples *= np.float32(1 / 32768)
        if fmt.sample_rate == TARGET_RATE:
            return samples  # nothing to resample (a per-chunk saving that counts at hundreds of streams)
        return self._resampler.push(samples)


def decode_base64(payload: object, *, max_bytes: int) -> bytes:
    """Strict base64 -> bytes, with a clear error for anything else."""
    if not isinstance(payload, str):
        raise FormatError(f"audio must be a base64 string, got {type(payload).__name__}")
    if len(payload) > (max_bytes * 4) // 3 + 4:
        raise FormatError(f"audio chunk larger than {max_bytes} bytes; send smaller chunks")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise FormatError("audio is not valid base64") from None
