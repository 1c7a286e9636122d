"""The benchmark's model: named Whisper dimensions with seeded random weights, written once as a Hugging Face
directory (weights, config, generation config, tokenizer files) that voxserve, transformers and CTranslate2's
converter all read, so every side runs exactly the same weights.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..config import ModelDims
from ..tokenizer import Tokenizer

# Whisper's published sizes (openai/whisper's model cards); only the shapes matter, the weights are random.
NAMED_DIMS: dict[str, ModelDims] = {
    "tiny": ModelDims(
        n_mels=80, n_audio_ctx=1500, n_audio_state=384, n_audio_head=6, n_audio_layer=4,
        n_vocab=51865, n_text_ctx=448, n_text_state=384, n_text_head=6, n_text_layer=4,
    ),
    "base": ModelDims(
        n_mels=80, n_audio_ctx=1500, n_audio_state=512, n_audio_head=8, n_audio_layer=6,
        n_vocab=51865, n_text_ctx=448, n_text_state=512, n_text_head=8, n_text_layer=6,
    ),
    "large-v3": ModelDims(
        n_mels=128, n_audio_ctx=1500, n_audio_state=1280, n_audio_head=20, n_audio_layer=32,
        n_vocab=51866, n_text_ctx=448, n_text_state=1280, n_text_head=20, n_text_layer=32,
        num_languages=100,
    ),
}  # fmt: skip

# Bumped whenever what is written changes, so a stale cached directory is rebuilt rather than reused.
_LAYOUT_VERSION = 1
_MARKER = "voxserve-bench.json"


class BenchError(RuntimeError):
    """The benchmark cannot run as asked (missing data, missing peer package, a peer that did not do the
    same work); the message says what to do."""


def resolve_dims(name: str) -> ModelDims:
    if name not in NAMED_DIMS:
        raise BenchError(f"unknown --dims {name!r}; choose one of {sorted(NAMED_DIMS)}")
    return NAMED_DIMS[name]


def bench_tokenizer(dims: ModelDims, tiktoken_path: Path) -> Tokenizer:
    """The multilingual Whisper tokenizer sized for ``dims``, set to English transcription."""
    if not tiktoken_path.is_file():
        raise BenchError(f"no tokenizer ranks file at {tiktoken_path}; pass --tiktoken PATH")
    tok = Tokenizer.from_tiktoken(tiktoken_path, num_languages=dims.num_languages)
    return tok.with_options(language="en", task="transcribe")


def generation_config(tok: Tokenizer, dims: ModelDims) -> dict:
    """A generation_config.json in the layout transformers' Whisper ``generate`` expects (language and task
    tables, the no-timestamps token). Suppression is left empty: each side sets it explicitly per run."""
    specials = tok.special_tokens
    return {
        "decoder_start_token_id": tok.sot,
        "bos_token_id": tok.eot,
        "eos_token_id": tok.eot,
        "pad_token_id": tok.eot,
        "max_length": dims.n_text_ctx,
        "is_multilingual": True,
        "lang_to_id": {f"<|{c}|>": specials[f"<|{c}|>"] for c in tok.all_language_codes},
        "task_to_id": {"transcribe": tok.transcribe, "translate": tok.translate},
        "no_timestamps_token_id": tok.no_timestamps,
        "prev_sot_token_id": tok.sot_prev,
        "suppress_tokens": [],
        "begin_suppress_tokens": [],
    }


def random_hf_dir(dims: ModelDims, directory: Path, tiktoken_path: Path, *, seed: int = 0) -> Path:
    """``directory`` holding seeded random weights of ``dims`` as a Hugging Face model with tokenizer files;
    written on first use and reused while its marker matches (same dims, seed and layout)."""
    import torch

    from ..model.load import hf_config, init_random, save_hf

    marker = {"dims": dims.to_dict(), "seed": seed, "layout": _LAYOUT_VERSION}
    marker_path = directory / _MARKER
    if marker_path.is_file() and json.loads(marker_path.read_text(encoding="utf-8")) == marker:
        return directory
    marker_path.unlink(missing_ok=True)
    tok = bench_tokenizer(dims, tiktoken_path)
    with torch.no_grad():
        model = init_random(dims, seed=seed)
    save_hf(
        model,
        directory,
        config=hf_config(dims, eot=tok.eot, sot=tok.sot),
        generation=generation_config(tok, dims),
    )
    tok.save_hf(directory)
    marker_path.write_text(
        json.dumps(marker) + "\n", encoding="utf-8"
    )  # written last: the directory is whole
    return directory
