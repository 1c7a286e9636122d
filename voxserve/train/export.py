"""Writing a trained model as a Hugging Face Whisper directory that voxserve and transformers both load.

config.json and model.safetensors come from ``voxserve.model.load``; generation_config.json carries what
Whisper decoding needs (language and task tables, the no-timestamps token, suppression lists, alignment heads);
the tokenizer is written as Hugging Face files. Weights may be stored in float16 to halve the size; loading
converts them to whatever dtype is asked for.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch

from ..model.load import hf_config, save_hf
from ..model.whisper import Whisper
from ..tokenizer import Tokenizer


def generation_config(
    model: Whisper, tokenizer: Tokenizer, *, base: dict[str, Any] | None = None
) -> dict[str, Any]:
    """generation_config.json for ``model``; ``base`` (a fine-tuned checkpoint's own) is kept and updated."""
    dims = model.dims
    heads = model.alignment_heads.nonzero().tolist()
    specials = tokenizer.special_tokens
    gen = dict(base or {})
    gen.update(
        {
            "decoder_start_token_id": tokenizer.sot,
            "bos_token_id": tokenizer.eot,
            "eos_token_id": tokenizer.eot,
            "pad_token_id": tokenizer.eot,
            "max_length": dims.n_text_ctx,
            "is_multilingual": tokenizer.is_multilingual,
            "no_timestamps_token_id": tokenizer.no_timestamps,
            "prev_sot_token_id": tokenizer.sot_prev,
            "alignment_heads": [[int(layer), int(head)] for layer, head in heads],
            "suppress_tokens": list(tokenizer.non_speech_tokens),
            "begin_suppress_tokens": [*tokenizer.encode(" "), tokenizer.eot],
        }
    )
    if tokenizer.is_multilingual:
        gen["lang_to_id"] = {f"<|{c}|>": specials[f"<|{c}|>"] for c in tokenizer.all_language_codes}
        gen["task_to_id"] = {"transcribe": tokenizer.transcribe, "translate": tokenizer.translate}
    gen.setdefault("max_initial_timestamp_index", 50)
    return gen


def export_hf(
    model: Whisper,
    tokenizer: Tokenizer,
    directory: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    base_generation: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` + ``tokenizer`` to ``directory`` as a Hugging Face Whisper model, weights in ``dtype``.
    ``extra`` is written to voxserve-training.json (how the model was made)."""
    out = Path(directory)
    weights = copy.deepcopy(model).to(device="cpu", dtype=dtype)
    config = hf_config(model.dims, eot=tokenizer.eot, sot=tokenizer.sot)
    config["torch_dtype"] = {torch.float16: "float16", torch.bfloat16: "bfloat16"}.get(dtype, "float32")
    save_hf(weights, out, config=config, generation=generation_config(model, tokenizer, base=base_generation))
    tokenizer.with_options(language=None, task=None).save_hf(out)
    if extra is not None:
        (out / "voxserve-training.json").write_text(json.dumps(extra, indent=2) + "\n", encoding="utf-8")
    return out


__all__ = ["export_hf", "generation_config"]
