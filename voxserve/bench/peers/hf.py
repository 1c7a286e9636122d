"""Hugging Face transformers as a peer: ``WhisperForConditionalGeneration.generate`` in its fastest
configuration: SDPA attention, batched, a static KV cache (``cache_implementation="static"``), float16 on CUDA.

The prompt is forced through Whisper's own ``language="en", task="transcribe", return_timestamps=False``
(which yields <|startoftranscript|><|en|><|transcribe|><|notimestamps|>); end-of-text is suppressed through
``generation_config.suppress_tokens`` and the length pinned with ``min_new_tokens = max_new_tokens = n``.
transformers compiles static-cache decoding by default (``generation_config.disable_compile`` False); that is
its fastest configuration on CUDA and the one DESIGN.md's reference figures (about 3.4 ms a step at batch 1 on the
H200) were measured with. The bench keeps it on for CUDA and off on the CPU (``--hf-compile``). A run on the H200
on 2026-12-04 with it off measured 27.6 ms a step: without it the peer is not in its fastest configuration.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import Tensor

from ...tokenizer import Tokenizer
from ..subjects import Subject, prompt_tokens, subject_from_decoder
from ..weights import BenchError


def _import_transformers():  # noqa: ANN202 - returns the module
    try:
        import transformers
    except ImportError:
        raise BenchError(
            "the transformers peer needs the 'transformers' package: pip install transformers "
            "(or leave it out with --peers)"
        ) from None
    return transformers


def hf_subject(
    hf_dir: Path,
    tok: Tokenizer,
    device: torch.device,
    precision: str,
    *,
    cache: str = "static",
    compile: bool = False,
) -> Subject:
    """transformers' Whisper on ``hf_dir`` (``precision``: "float32", "float16" or "bfloat16")."""
    transformers = _import_transformers()
    from ...config import resolve_dtype

    transformers.logging.set_verbosity_error()
    dtype = resolve_dtype(precision)
    if cache not in ("static", "dynamic"):
        raise BenchError(f"--hf-cache must be 'static' or 'dynamic', got {cache!r}")
    model = transformers.WhisperForConditionalGeneration.from_pretrained(
        str(hf_dir), dtype=dtype, attn_implementation="sdpa"
    )
    model = model.to(device).eval()
    prompt = list(prompt_tokens(tok))

    def config_for(n: int):  # noqa: ANN202 - a transformers GenerationConfig
        gc = copy.deepcopy(model.generation_config)
        gc.suppress_tokens = [tok.eot]
        gc.begin_suppress_tokens = None
        gc.max_length = None
        gc.max_new_tokens = n
        gc.min_new_tokens = n
        gc.do_sample = False
        gc.num_beams = 1
        gc.cache_implementation = "static" if cache == "static" else None
        gc.disable_compile = not compile
        return gc

    configs: dict[int, object] = {}

    @torch.inference_mode()
    def decode(mel: Tensor, n: int) -> list[list[int]]:
        if n not in configs:
            configs[n] = config_for(n)
        out = model.generate(
            mel.to(dtype),
            generation_config=configs[n],
            language="en",
            task="transcribe",
            return_timestamps=False,
        )
        sequences = out if isinstance(out, Tensor) else out["sequences"]
        rows = sequences.tolist()
        # Some transformers versions return the prompt too; what the suites check is what follows it.
        return [row[len(prompt) :] if row[: len(prompt)] == prompt else row for row in rows]

    return subject_from_decoder(
        "transformers",
        decode,
        device=device,
        precision=str(dtype).removeprefix("torch."),
        n_mels=model.config.num_mel_bins,
        side="peer",
        config={
            "transformers": transformers.__version__,
            "attn_implementation": "sdpa",
            "cache_implementation": cache,
            "torch_compile": "transformers' automatic compile" if compile else "off (disable_compile=True)",
            "eot_suppression": "generation_config.suppress_tokens=[eot], min_new_tokens=max_new_tokens=n",
        },
    )
