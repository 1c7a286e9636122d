"""Synthetic speech datasets: sentences -> espeak-ng renderings -> 16 kHz WAV files and JSONL manifests.

Every random choice (voice, speed, pitch, padding, augmentation seed) is drawn in the parent process when the
jobs are planned, so a seed gives the same dataset whatever the number of workers. Workers (separate processes;
espeak-ng and resampling are CPU-bound) render, resample to 16 kHz, trim the silence espeak-ng leaves around
speech down to a random short pad, augment, and write the WAV; the parent writes the manifests in job order.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import random
import time
import wave
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import SAMPLE_RATE
from .augment import NO_AUGMENTATION, Augmentation, speech_bounds
from .espeak import DEFAULT_VARIANTS, DEFAULT_VOICES, EspeakError, find_espeak, render
from .manifest import write_manifest


@dataclass(frozen=True)
class SynthConfig:
    voices: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_VOICES))  # per language
    variants: tuple[str, ...] = DEFAULT_VARIANTS  # espeak-ng "+variant" names; "" is the voice's own
    speeds: tuple[int, int] = (130, 210)  # words a minute, drawn uniformly
    pitches: tuple[int, int] = (25, 75)  # espeak-ng pitch 0..99, drawn uniformly
    variants_per_sentence: int = 1  # renderings of each training sentence (held-out ones get one)
    pad: tuple[float, float] = (0.05, 0.5)  # seconds of silence kept before and after the speech
    augmentation: Augmentation = Augmentation()  # applied to training utterances only
    seed: int = 0

    def __post_init__(self) -> None:
        if self.variants_per_sentence < 1:
            raise ValueError(f"variants_per_sentence must be >= 1, got {self.variants_per_sentence}")
        for name, lo, hi, bounds in (
            ("speeds", *self.speeds, (80, 450)),
            ("pitches", *self.pitches, (0, 99)),
        ):
            if not (bounds[0] <= lo <= hi <= bounds[1]):
                raise ValueError(f"{name} must be LO,HI within {bounds[0]}..{bounds[1]}, got {lo},{hi}")
        if not 0 <= self.pad[0] <= self.pad[1] <= 5:
            raise ValueError(f"pad must be LO,HI seconds within 0..5, got {self.pad}")
        if not self.variants:
            raise ValueError("give at least one voice variant ('' for the plain voice)")


@dataclass(frozen=True)
class SynthJob:
    name: str  # WAV path relative to the output folder, without ".wav"
    split: str  # "train" or "heldout"
    text: str
    language: str  # manifest language code ("en", "zh")
    voice: str  # espeak-ng voice with variant, e.g. "en-us+f3"
    speed: int
    pitch: int
    pad_before: float
    pad_after: float
    augment: bool
    seed: int


def plan_jobs(splits: dict[str, Sequence[tuple[str, str]]], config: SynthConfig) -> list[SynthJob]:
    """Jobs for sentences given per split as (text, language); training sentences get
    ``variants_per_sentence`` renderings, held-out ones one."""
    rng = random.Random(config.seed)
    jobs = []
    for split, sentences in splits.items():
        copies = config.variants_per_sentence if split == "train" else 1
        for i, (text, language) in enumerate(sentences):
            voices = config.voices.get(language)
            if not voices:
                raise ValueError(f"no espeak-ng voice configured for language {language!r}")
            for v in range(copies):
                variant = rng.choice(config.variants)
                voice = rng.choice(voices) + (f"+{variant}" if variant else "")
                jobs.append(
                    SynthJob(
                        name=f"{split}/{i // 1000:04d}/{language}{i:06d}_{v}",
                        split=split,
                        text=text,
                        language=language,
                        voice=voice,
                        speed=rng.randint(*config.speeds),
                        pitch=rng.randint(*config.pitches),
                        pad_before=round(rng.uniform(*config.pad), 3),
                        pad_after=round(rng.uniform(*config.pad), 3),
                        augment=split == "train" and config.augmentation.active,
                        seed=rng.getrandbits(63),
                    )
                )
    return jobs


def _to_16k(samples: np.ndarray, rate: int) -> np.ndarray:
    x = samples.astype(np.float32) / 32768
    if rate == SAMPLE_RATE:
        return x
    from ..audio.resample import resample

    return np.asarray(resample(x, rate, SAMPLE_RATE), dtype=np.float32)


def render_job(job: SynthJob, out_dir: Path, augmentation: Augmentation, binary: str) -> dict[str, Any]:
    """Render, trim, augment and write one utterance; returns its manifest row."""
    rendering = render(job.text, job.voice, speed=job.speed, pitch=job.pitch, binary=binary)
    x = _to_16k(rendering.samples, rendering.sample_rate)
    start, end = speech_bounds(x)
    if end <= start:
        raise EspeakError(f"espeak-ng produced silence for {job.text!r} ({job.voice})")
    before, after = round(job.pad_before * SAMPLE_RATE), round(job.pad_after * SAMPLE_RATE)
    speech = x[start:end]
    x = np.concatenate([np.zeros(before, np.float32), speech, np.zeros(after, np.float32)])
    applied: list[str] = []
    if job.augment:
        import torch

        mask = torch.zeros(1, len(x), dtype=torch.bool)
        mask[0, before : before + len(speech)] = True
        generator = torch.Generator().manual_seed(job.seed)
        augmented, effects = augmentation(torch.from_numpy(x)[None], generator, speech=mask)
        x, applied = augmented[0].numpy(), effects[0]
    path = out_dir / f"{job.name}.wav"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_wav(path, x)
    row: dict[str, Any] = {
        "audio": f"{job.name}.wav",
        "text": job.text,
        "language": job.language,
        "duration": round(len(x) / SAMPLE_RATE, 4),
        "voice": job.voice,
        "speed": job.speed,
        "pitch": job.pitch,
        "speech_start": round(before / SAMPLE_RATE, 4),
        "speech_end": round((before + len(speech)) / SAMPLE_RATE, 4),
    }
    if applied:
        row["augment"] = applied
    return row


def speak(
    text: str, voice: str = "en-us", *, speed: int = 160, pitch: int = 50, pad: float = 0.3
) -> np.ndarray:
    """``text`` spoken by espeak-ng as 16 kHz float32 samples, the silence around the speech cut to ``pad``
    seconds each side (for demos and tests that need speech on the spot). Raises EspeakError without espeak-ng."""
    rendering = render(text, voice, speed=speed, pitch=pitch)
    x = _to_16k(rendering.samples, rendering.sample_rate)
    start, end = speech_bounds(x)
    margin = np.zeros(round(pad * SAMPLE_RATE), np.float32)
    return np.concatenate([margin, x[start:end], margin])


def write_wav(path: Path, x: np.ndarray, rate: int = SAMPLE_RATE) -> None:
    pcm = np.clip(np.round(x * 32767), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


# ----------------------------------------------------------------------------------------- worker pool

_WORKER: dict[str, Any] = {}


def _init_worker(out_dir: Path, augmentation: Augmentation, binary: str) -> None:
    import torch

    torch.set_num_threads(1)  # one process a core; intra-op threads would only contend
    _WORKER.update(out_dir=out_dir, augmentation=augmentation, binary=binary)


def _run(job: SynthJob) -> tuple[SynthJob, dict[str, Any] | None, str | None]:
    return _run_here(job, _WORKER["out_dir"], _WORKER["augmentation"], _WORKER["binary"])


def _run_here(
    job: SynthJob, out_dir: Path, augmentation: Augmentation, binary: str
) -> tuple[SynthJob, dict[str, Any] | None, str | None]:
    try:
        return job, render_job(job, out_dir, augmentation, binary), None
    except (EspeakError, ValueError, OSError) as e:
        return job, None, str(e)


@dataclass
class SynthReport:
    rows: dict[str, list[dict[str, Any]]]  # per split, in job order
    failures: list[tuple[str, str]]  # (job name, error)
    audio_seconds: float
    wall_seconds: float
    workers: int

    @property
    def realtime_per_core(self) -> float:
        """Seconds of audio made per second of wall time per worker process."""
        return self.audio_seconds / max(self.wall_seconds, 1e-9) / self.workers


def synthesize(
    jobs: Sequence[SynthJob],
    out_dir: str | Path,
    augmentation: Augmentation = NO_AUGMENTATION,
    *,
    workers: int = 1,
    progress: bool = True,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> SynthReport:
    """Render ``jobs`` into ``out_dir`` with ``workers`` processes (1: in this process) and write
    ``<split>.jsonl`` manifests."""
    from tqdm import tqdm

    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    binary = find_espeak()
    results: dict[str, dict[str, Any]] = {}
    failures: list[tuple[str, str]] = []
    audio = 0.0
    t0 = time.perf_counter()
    bar = tqdm(total=len(jobs), desc="synthesising", unit="utt", disable=not progress)
    with contextlib.ExitStack() as stack:
        if workers > 1:
            # spawn, not fork: the parent may hold torch's thread pools, which do not survive a fork.
            ctx = mp.get_context("spawn")
            pool = stack.enter_context(
                ctx.Pool(workers, initializer=_init_worker, initargs=(out, augmentation, binary))
            )
            outcomes = pool.imap_unordered(_run, jobs, chunksize=8)
        else:
            import torch

            # One intra-op thread, as in the workers: torch's conv1d (the resampler) runs about 100x slower
            # on CPU with two threads than with one for these shapes (measured with torch 2.13).
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            stack.callback(torch.set_num_threads, threads)
            outcomes = (_run_here(job, out, augmentation, binary) for job in jobs)
        for job, row, error in outcomes:
            if row is None:
                failures.append((job.name, error or "unknown error"))
            else:
                results[job.name] = row
                audio += row["duration"]
                if on_row:
                    on_row(row)
            bar.update()
            bar.set_postfix(audio_h=f"{audio / 3600:.2f}", failed=len(failures), refresh=False)
    bar.close()
    wall = time.perf_counter() - t0
    rows: dict[str, list[dict[str, Any]]] = {}
    for job in jobs:
        if job.name in results:
            rows.setdefault(job.split, []).append(results[job.name])
    for split, split_rows in rows.items():
        write_manifest(out / f"{split}.jsonl", split_rows)
    return SynthReport(rows, failures, audio, wall, workers)


__all__ = [
    "SynthConfig", "SynthJob", "SynthReport", "plan_jobs", "render_job", "speak", "synthesize", "write_wav",
]  # fmt: skip
