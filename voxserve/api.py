"""The public library API: load a model once, transcribe many inputs.

``load_model`` resolves a checkpoint (local directory, openai ``.pt`` file, hub id, or the embedded default) and
its tokenizer; ``WhisperModel.transcribe`` turns audio of any length into a lazy iterator of typed segments.
Options are plain keyword arguments (validated before any work starts) or ready-made option objects.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from .audio.io import load_audio
from .decoding.options import DecodingOptions, OptionsError, TranscribeOptions
from .model.load import CheckpointInfo, ModelLoadError, load_checkpoint
from .model.whisper import Whisper
from .results import Segment, Transcription, TranscriptionInfo
from .tokenizer import Tokenizer, default_tiktoken_path
from .transcribe.longform import transcribe_audio

AudioInput = str | os.PathLike | bytes | BinaryIO | np.ndarray | torch.Tensor

# Where the embedded default model lives once it is trained (see the [demo] issue); until then the default is a
# seeded random-weight tiny model, which runs every code path but recognises nothing.
DEMO_MODEL_DIR = Path(__file__).parent / "assets" / "demo-model"
DEFAULT_MODEL = "default"


@dataclass
class WhisperModel:
    """A loaded checkpoint with its tokenizer, ready to transcribe."""

    model: Whisper
    tokenizer: Tokenizer
    checkpoint: CheckpointInfo
    is_random: bool = False  # weights are random (the placeholder default): transcripts mean nothing

    @property
    def device(self) -> torch.device:
        return self.model.device

    def transcribe(
        self,
        audio: AudioInput,
        options: TranscribeOptions | None = None,
        *,
        progress: bool = False,
        max_duration: float | None = None,
        **option_kwargs: Any,
    ) -> tuple[Iterator[Segment], TranscriptionInfo]:
        """Transcribe ``audio`` (a path, bytes, a file object, or 16 kHz mono float samples).

        Returns (segments, info): info at once, segments lazily as they are decoded. Options come either as a
        ``TranscribeOptions`` or as keyword arguments naming its fields or ``DecodingOptions`` fields
        (``language="en", beam_size=5, word_timestamps=True``), not both.
        """
        if options is not None and option_kwargs:
            raise OptionsError("pass either a TranscribeOptions or keyword options, not both")
        options = options or make_options(**option_kwargs)
        language = options.decoding.language
        if language is not None and self.tokenizer.is_multilingual:
            try:  # before decoding anything: an unknown language is the caller's mistake, named as such
                self.tokenizer.with_options(language=language, task=None)
            except ValueError as e:
                raise OptionsError(str(e)) from None
        if max_duration is not None and not max_duration > 0:
            raise OptionsError(f"max_duration must be positive seconds, got {max_duration}")
        samples = as_samples(audio, max_duration=max_duration)
        return transcribe_audio(self.model, self.tokenizer, samples, options, progress=progress)


def make_options(**kwargs: Any) -> TranscribeOptions:
    """TranscribeOptions from flat keyword arguments; unknown names raise OptionsError listing the valid ones."""
    decoding_names = {f.name for f in fields(DecodingOptions)}
    transcribe_names = {f.name for f in fields(TranscribeOptions)} - {"decoding"}
    unknown = sorted(set(kwargs) - decoding_names - transcribe_names)
    if unknown:
        valid = ", ".join(sorted(decoding_names | transcribe_names))
        raise OptionsError(f"unknown option(s) {unknown}; valid options: {valid}")
    if "temperature" in kwargs and "temperatures" not in kwargs:
        # One temperature given as `temperature` means "no fallback".
        t = kwargs.pop("temperature")
        kwargs["temperatures"] = tuple(t) if isinstance(t, list | tuple) else (t,)
    decoding = DecodingOptions(**{k: v for k, v in kwargs.items() if k in decoding_names})
    return TranscribeOptions(decoding=decoding, **{k: v for k, v in kwargs.items() if k in transcribe_names})


def as_samples(audio: AudioInput, *, max_duration: float | None = None) -> np.ndarray | torch.Tensor:
    """Decode ``audio`` to 16 kHz mono float32 unless it already is samples."""
    if isinstance(audio, np.ndarray | torch.Tensor):
        if audio.ndim != 1:
            raise OptionsError(
                f"audio samples must be one-dimensional (16 kHz mono), got shape {tuple(audio.shape)}"
            )
        return audio
    return load_audio(audio, max_duration=max_duration)


def load_model(
    source: str | os.PathLike | None = DEFAULT_MODEL,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    tokenizer: str | os.PathLike | None = None,
    rebuild: bool = False,
) -> WhisperModel:
    """Load a checkpoint: an HF directory, an openai-whisper ``.pt`` file, a hub id, "default", or an engine
    build directory (``voxserve build``).

    ``device`` defaults to CUDA when available; ``dtype`` to float16 on CUDA and float32 on the CPU.
    ``tokenizer`` overrides where the tokenizer comes from (a ``.tiktoken`` file or an HF tokenizer directory).
    A build keeps its own precision, dtype and tokenizer; one made for another machine raises
    ``BuildMismatchError`` unless ``rebuild`` (then it is built again here from its recorded source).
    """
    if source is not None and Path(source).is_dir() and (Path(source) / "manifest.json").is_file():
        from .build import is_build, load_build

        if is_build(source):
            return load_build(source, device=device, rebuild=rebuild)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("device 'cuda' was asked for, but no CUDA device is available")
    dtype = dtype or ("float16" if device.type == "cuda" else "float32")
    if source is None or str(source) == DEFAULT_MODEL:
        if DEMO_MODEL_DIR.is_dir():
            source = DEMO_MODEL_DIR
        else:
            return _random_default(device, dtype, tokenizer)
    model, info = load_checkpoint(source, device=device, dtype=dtype)
    return WhisperModel(model, _tokenizer_for(model, info, tokenizer), info)


def _tokenizer_for(model: Whisper, info: CheckpointInfo, override: str | os.PathLike | None) -> Tokenizer:
    dims = model.dims
    kw = {"num_languages": dims.num_languages, "multilingual": dims.multilingual}
    try:
        if override is not None:
            path = Path(override)
            tok = Tokenizer.from_tiktoken(path, **kw) if path.is_file() else Tokenizer.from_hf_dir(path)
        elif info.directory is not None and (
            (info.directory / "tokenizer.json").is_file() or (info.directory / "vocab.json").is_file()
        ):
            tok = Tokenizer.from_hf_dir(info.directory)
        elif info.directory is not None and len(found := sorted(info.directory.glob("*.tiktoken"))) == 1:
            tok = Tokenizer.from_tiktoken(found[0], **kw)
        else:
            tok = Tokenizer.from_tiktoken(
                default_tiktoken_path("multilingual" if dims.multilingual else "gpt2"), **kw
            )
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{info.source}: no usable tokenizer ({e}); pass one with --tokenizer") from None
    if tok.n_vocab != dims.n_vocab:
        raise ModelLoadError(
            f"{info.source}: the tokenizer has {tok.n_vocab} tokens but the model's vocabulary has {dims.n_vocab}"
        )
    return tok


def _random_default(
    device: torch.device, dtype: str | torch.dtype, tokenizer: str | os.PathLike | None
) -> WhisperModel:
    from .config import ModelDims, resolve_dtype
    from .model.load import init_random

    dims = ModelDims(
        n_mels=80,
        n_audio_ctx=1500,
        n_audio_state=384,
        n_audio_head=6,
        n_audio_layer=4,
        n_vocab=51865,
        n_text_ctx=448,
        n_text_state=384,
        n_text_head=6,
        n_text_layer=4,
    )  # fmt: skip  (whisper tiny's dimensions)
    warnings.warn(
        "the embedded default is a random-weight tiny model until the demo model is trained: its transcripts are "
        "meaningless; pass --model with a real checkpoint",
        stacklevel=3,
    )
    model = init_random(dims, seed=0).to(device=device, dtype=resolve_dtype(dtype))
    info = CheckpointInfo(source="random tiny (seed 0)", format="random", directory=None)
    return WhisperModel(model, _tokenizer_for(model, info, tokenizer), info, is_random=True)


def transcribe(
    model: WhisperModel | str | os.PathLike,
    audio: AudioInput,
    options: TranscribeOptions | None = None,
    *,
    progress: bool = False,
    **option_kwargs: Any,
) -> Transcription:
    """Transcribe ``audio`` to a finished :class:`Transcription` (segments, words and info)."""
    if not isinstance(model, WhisperModel):
        model = load_model(model)
    segments, info = model.transcribe(audio, options, progress=progress, **option_kwargs)
    return Transcription.from_segments(list(segments), info)


# ``voxserve.transcribe`` names both this function (the public API) and the package voxserve/transcribe/, whose
# import above bound the package to that attribute of ``voxserve``: bind the function, as openai-whisper does.
sys.modules[__package__].transcribe = transcribe
