"""Loading a checkpoint with its tokenizer without the audio-decoding stack (no PyAV needed), for training
and evaluation on machines that only have WAV files."""

from __future__ import annotations

from pathlib import Path

import torch

from ..model.load import CheckpointInfo, ModelLoadError, load_checkpoint
from ..model.whisper import Whisper
from ..tokenizer import Tokenizer

SHARED_TIKTOKEN = (
    Path(__file__).resolve().parents[2].parent / "shared/data/whisper-assets/multilingual.tiktoken"
)


def load_tokenizer(path: str | Path, *, num_languages: int = 99, multilingual: bool = True) -> Tokenizer:
    """A tokenizer from a .tiktoken file (sized by the model's language count) or an HF tokenizer directory."""
    path = Path(path)
    if path.is_file():
        return Tokenizer.from_tiktoken(path, num_languages=num_languages, multilingual=multilingual)
    return Tokenizer.load(path)


def load_model_and_tokenizer(
    source: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "float32",
    tokenizer: str | Path | None = None,
) -> tuple[Whisper, CheckpointInfo, Tokenizer]:
    """The checkpoint at ``source`` and its tokenizer: ``tokenizer`` if given, else the tokenizer files beside
    the weights, else the shared multilingual ranks file."""
    model, info = load_checkpoint(source, device=device, dtype=dtype)
    dims = model.dims
    where = tokenizer
    if where is None and info.directory is not None:
        d = info.directory
        if (
            (d / "tokenizer.json").is_file()
            or (d / "vocab.json").is_file()
            or len(list(d.glob("*.tiktoken"))) == 1
        ):
            where = d
    if where is None and SHARED_TIKTOKEN.is_file() and dims.multilingual:
        where = SHARED_TIKTOKEN
    if where is None:
        raise ModelLoadError(f"{source}: no tokenizer files beside the weights; pass --tokenizer")
    try:
        tok = load_tokenizer(where, num_languages=dims.num_languages, multilingual=dims.multilingual)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{where}: not a usable tokenizer ({e})") from None
    if tok.n_vocab != dims.n_vocab:
        raise ModelLoadError(f"{where}: the tokenizer has {tok.n_vocab} tokens, the model {dims.n_vocab}")
    return model, info, tok


__all__ = ["SHARED_TIKTOKEN", "load_model_and_tokenizer", "load_tokenizer"]
