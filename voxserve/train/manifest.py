"""JSONL speech manifests: one utterance a line, and loading their audio into memory.

A line is ``{"audio": path, "text": ..., "language": "en", "duration": s}`` plus, optionally, ``voice``,
``speech_start`` and ``speech_end`` (seconds where speech begins and ends in the file; used for timestamp
targets). Relative audio paths are relative to the manifest's folder. NeMo-style manifests, whose audio key is
``audio_filepath`` (as HiFi-TTS ships), are read too; the language then defaults to English. WAV files are read with the standard
library (no audio decoder package needed, as on the GPU machine); other formats go through
``voxserve.audio.io`` when it is installed.
"""

from __future__ import annotations

import json
import wave
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import SAMPLE_RATE


class ManifestError(ValueError):
    """A manifest line or its audio cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class Utterance:
    audio: Path  # absolute path to the audio file
    text: str
    language: str
    duration: float | None = None
    speech_start: float | None = None
    speech_end: float | None = None
    voice: str | None = None
    id: str = ""  # the audio path as written in the manifest

    def to_json(self, root: Path | None = None) -> dict[str, Any]:
        audio = self.audio
        if root is not None:
            try:
                audio = self.audio.relative_to(root)
            except ValueError:
                pass
        row: dict[str, Any] = {"audio": str(audio), "text": self.text, "language": self.language}
        for key in ("duration", "voice", "speech_start", "speech_end"):
            value = getattr(self, key)
            if value is not None:
                row[key] = round(value, 4) if isinstance(value, float) else value
        return row


def read_manifest(path: str | Path, *, check_files: bool = True) -> list[Utterance]:
    """Parse a JSONL manifest; every problem is reported with its line number."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path}")
    root = path.resolve().parent
    items = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ManifestError(f"{path}:{n}: not JSON ({e.msg})") from None
            items.append(_utterance(row, root, f"{path}:{n}", check_files))
    if not items:
        raise ManifestError(f"{path}: the manifest has no utterances")
    return items


def _utterance(row: Any, root: Path, where: str, check_files: bool) -> Utterance:
    if not isinstance(row, dict):
        raise ManifestError(f"{where}: each line must be a JSON object")
    if "audio" not in row and "audio_filepath" in row:
        row = {**row, "audio": row["audio_filepath"]}
    for key in ("audio", "text"):
        if not isinstance(row.get(key), str) or not row[key].strip():
            raise ManifestError(f"{where}: missing or empty {key!r}")
    audio = Path(row["audio"])
    audio = audio if audio.is_absolute() else root / audio
    if check_files and not audio.is_file():
        raise ManifestError(f"{where}: audio file not found: {audio}")
    numbers = {}
    for key in ("duration", "speech_start", "speech_end"):
        value = row.get(key)
        if value is not None and (not isinstance(value, int | float) or value < 0):
            raise ManifestError(f"{where}: {key!r} must be a non-negative number, got {value!r}")
        numbers[key] = None if value is None else float(value)
    if (numbers["speech_start"] is None) != (numbers["speech_end"] is None):
        raise ManifestError(f"{where}: give both speech_start and speech_end, or neither")
    if numbers["speech_start"] is not None and numbers["speech_start"] > numbers["speech_end"]:
        raise ManifestError(f"{where}: speech_start is after speech_end")
    language = row.get("language", "en")
    language = "zh" if language == "cmn" else language
    return Utterance(
        audio=audio,
        text=row["text"].strip(),
        language=language,
        voice=row.get("voice"),
        id=row["audio"],
        **numbers,
    )


def write_manifest(path: str | Path, items: Iterable[Utterance | dict[str, Any]]) -> int:
    """Write utterances (or ready rows) as JSONL, audio paths relative to the manifest's folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    root = path.resolve().parent
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for item in items:
            row = item.to_json(root) if isinstance(item, Utterance) else item
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def read_wav_int16(path: Path) -> np.ndarray:
    """16 kHz mono int16 samples of a PCM WAV file (other rates are resampled, stereo is averaged)."""
    try:
        with wave.open(str(path)) as w:
            width, channels, rate = w.getsampwidth(), w.getnchannels(), w.getframerate()
            frames = w.readframes(w.getnframes())
    except (wave.Error, EOFError) as e:
        raise ManifestError(f"{path}: not a PCM WAV file ({e})") from None
    if width != 2:
        raise ManifestError(f"{path}: {8 * width}-bit WAV; only 16-bit PCM is read without an audio decoder")
    x = np.frombuffer(frames, dtype="<i2")
    if channels > 1:
        x = x[: len(x) // channels * channels].reshape(-1, channels).mean(axis=1)
    if rate != SAMPLE_RATE:
        from ..audio.resample import resample

        x = np.asarray(resample(x.astype(np.float32) / 32768, rate, SAMPLE_RATE)) * 32768
    return np.clip(np.round(x), -32768, 32767).astype(np.int16) if x.dtype != np.int16 else x.copy()


def load_audio_int16(path: Path) -> np.ndarray:
    """16 kHz mono int16 samples of any audio file: WAV directly, anything else through voxserve.audio.io."""
    if path.suffix.lower() == ".wav":
        return read_wav_int16(path)
    try:
        from ..audio.io import load_audio
    except ImportError:
        raise ManifestError(
            f"{path}: only WAV files can be read here (no audio decoder installed); convert to 16-bit WAV"
        ) from None
    x = np.asarray(load_audio(str(path)), dtype=np.float32)
    return np.clip(np.round(x * 32768), -32768, 32767).astype(np.int16)


def load_all_audio(
    items: Sequence[Utterance], *, workers: int = 8, progress: bool = True
) -> list[np.ndarray]:
    """Every utterance's samples as int16 arrays (in order), read by a small thread pool."""
    from tqdm import tqdm

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = pool.map(lambda u: load_audio_int16(u.audio), items)
        return list(tqdm(results, total=len(items), desc="loading audio", unit="file", disable=not progress))


__all__ = [
    "ManifestError", "Utterance", "load_all_audio", "load_audio_int16", "read_manifest", "read_wav_int16",
    "write_manifest",
]  # fmt: skip
