"""What the benchmark measures: a *subject* is anything that turns a batch of log-mel windows into exactly
``n`` greedy tokens per window, for the prompt <|startoftranscript|><|en|><|transcribe|><|notimestamps|>
with end-of-text suppressed.

voxserve's side is built here; the peers (transformers, CTranslate2) are in ``peers/``. Every side is a
:class:`Subject`; the suites time ``Subject.decode`` and check that it really produced ``n`` tokens per window.

Plugging in another voxserve path takes one function: wrap any callable ``decode(mel, n) -> token lists`` with
:func:`subject_from_decoder` and register the builder in :data:`VOXSERVE_SUBJECTS`; ``voxserve bench
--subject NAME`` then measures it. :func:`engine_subject` (the batching engine) is built exactly that way.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..engine import pdl
from ..tokenizer import Tokenizer

if TYPE_CHECKING:
    from ..decoding.options import DecodingOptions
    from ..model.whisper import Whisper

# mel [B, n_mels, 3000] float32 on the subject's device, tokens per window -> the sampled ids per window
# (the prompt not included). Must block until the ids are on the host (a Python list does).
DecodeFn = Callable[[Tensor, int], list[list[int]]]


@dataclass(frozen=True)
class Subject:
    name: str  # e.g. "voxserve-reference", "transformers", "ctranslate2-int8"
    side: str  # "voxserve" or "peer"
    device: torch.device  # where the features are computed and handed over
    precision: str  # weights / compute type as the subject names it
    n_mels: int
    decode: DecodeFn
    config: dict[str, Any] = field(default_factory=dict)  # how it was set up (recorded in the result file)
    close: Callable[[], None] | None = None  # releases threads / memory once the subject is measured


def subject_from_decoder(
    name: str,
    decode: DecodeFn,
    *,
    device: str | torch.device,
    precision: str,
    n_mels: int,
    side: str = "voxserve",
    config: dict[str, Any] | None = None,
    close: Callable[[], None] | None = None,
) -> Subject:
    """A subject from any callable that decodes a batch of mels into ``n`` token ids per window: the one
    place a new decoding path (the fast engine) plugs into the benchmark."""
    if side not in ("voxserve", "peer"):
        raise ValueError(f"side must be 'voxserve' or 'peer', got {side!r}")
    return Subject(name, side, torch.device(device), precision, n_mels, decode, dict(config or {}), close)


def prompt_tokens(tok: Tokenizer) -> tuple[int, ...]:
    """<|startoftranscript|><|en|><|transcribe|><|notimestamps|> for the benchmark's tokenizer."""
    return tok.with_options(language="en", task="transcribe").sot_sequence_including_notimestamps


def bench_options(tok: Tokenizer, n: int) -> DecodingOptions:
    """The benchmark's decoding options for voxserve's decoders: English transcription without timestamps,
    greedy, exactly ``n`` tokens (end-of-text in ``suppress_tokens``, no blank suppression)."""
    from ..decoding.options import DecodingOptions

    return DecodingOptions(
        language="en",
        task="transcribe",
        temperature=0.0,
        sample_len=n,
        suppress_tokens=(tok.eot,),
        suppress_blank=False,
        without_timestamps=True,
    )


def _load(hf_dir: Path, device: torch.device, precision: str) -> tuple[Whisper, str]:
    """The model in ``precision``: a float dtype (fp32, fp16, bf16) as loaded, or a quantized precision of
    ``voxserve.model.quant`` (int8-dynamic on the CPU, int8, fp8) swapped in from the float32 weights."""
    from ..config import resolve_dtype
    from ..model.load import load_checkpoint
    from ..model.quant import FLOAT_PRECISIONS, PRECISIONS, activation_dtype, quantize_model

    if precision in PRECISIONS and precision not in FLOAT_PRECISIONS:
        # Quantized modules around activations in the dtype voxserve build gives them.
        model, _ = load_checkpoint(hf_dir, device=device, dtype=activation_dtype(precision, device))
        return quantize_model(model, precision), precision
    dtype = resolve_dtype(precision)
    model, _ = load_checkpoint(hf_dir, device=device, dtype=dtype)
    return model, str(dtype).removeprefix("torch.")


def reference_subject(hf_dir: Path, tok: Tokenizer, device: torch.device, precision: str) -> Subject:
    """voxserve's reference decoder (``WindowDecoder``, eager) on the weights in ``hf_dir``."""
    from ..decoding.decode import WindowDecoder

    model, dtype = _load(hf_dir, device, precision)
    decoders: dict[int, WindowDecoder] = {}

    @torch.inference_mode()
    def decode(mel: Tensor, n: int) -> list[list[int]]:
        if n not in decoders:
            decoders[n] = WindowDecoder(model, tok, bench_options(tok, n))
        return [list(r.tokens) for r in decoders[n].decode(mel)]

    return subject_from_decoder(
        "voxserve-reference",
        decode,
        device=device,
        precision=dtype,
        n_mels=model.dims.n_mels,
        config={"path": "voxserve.decoding.decode.WindowDecoder (eager reference)"},
    )


def engine_subject(
    hf_dir: Path,
    tok: Tokenizer,
    device: torch.device,
    precision: str,
    *,
    compile: bool = False,
    fused_step: bool = True,
    lookahead: bool | None = None,
    prefill_graphs: bool = True,
    cross_kv: str = "model",
) -> Subject:
    """voxserve's batching engine (``voxserve.engine`` through ``decoding.batched.BatchDecoder``) with its
    default configuration, or with one of its options changed (``compile``: the decode step and encoder through
    torch.compile; ``fused_step=False``: the CUDA step's separate kernels instead of engine/fused.py's;
    ``lookahead=False``: each step's results read before the next is launched; ``prefill_graphs=False``: the
    prefill eager, not captured; ``cross_kv="int8"``: 8-bit cross-attention K/V): every window of a call is
    submitted at once and decoded in continuous batches."""
    from ..decoding.batched import BatchDecoder, make_engine
    from ..engine.types import EngineConfig

    model, dtype = _load(hf_dir, device, precision)
    engine = make_engine(
        model,
        tok,
        EngineConfig(
            compile=compile,
            fused_step=fused_step,
            lookahead=lookahead,
            prefill_graphs=prefill_graphs,
            cross_kv=cross_kv,
        ),
    )
    batch = BatchDecoder(engine, model, tok)

    @torch.inference_mode()
    def decode(mel: Tensor, n: int) -> list[list[int]]:
        return [list(r.tokens) for r in batch.decode(mel, bench_options(tok, n))]

    return subject_from_decoder(
        "voxserve-engine"
        + ("-compiled" if compile else "")
        + ("" if fused_step else "-unfused")
        + ("-in-order" if lookahead is False else "")
        + ("" if prefill_graphs else "-eager-prefill")
        + ("-kv8" if cross_kv == "int8" else ""),
        decode,
        device=device,
        precision=dtype,
        n_mels=model.dims.n_mels,
        config={
            "path": "voxserve.engine.Engine via decoding.batched.BatchDecoder",
            "slots": engine.n_slots,
            "engine_config": repr(engine.config),
            "fused_step": engine.runner.fused_step,  # in effect (the config's request, where the device allows)
            "lookahead": engine.lookahead,
            "prefill_graphs": engine.runner.prefill_graphs,
            "cross_kv": engine.config.cross_kv,
            # rows up to which the step's kernels launch dependently (engine/pdl.py; 0: off here)
            "dependent_launch_rows": pdl.MAX_ROWS if pdl.enabled(torch.device(device), 1) else 0,
        },  # fmt: skip
        close=engine.close,
    )


# Name given to --subject -> builder(hf_dir, tokenizer, device, precision). New decoding paths join here.
VOXSERVE_SUBJECTS: dict[str, Callable[[Path, Tokenizer, torch.device, str], Subject]] = {
    "reference": reference_subject,
    "engine": engine_subject,
    "engine-compiled": functools.partial(engine_subject, compile=True),
    "engine-unfused": functools.partial(engine_subject, fused_step=False),
    "engine-in-order": functools.partial(engine_subject, lookahead=False),
    "engine-plain": functools.partial(engine_subject, fused_step=False, lookahead=False),
    "engine-eager-prefill": functools.partial(engine_subject, prefill_graphs=False),
    "engine-kv8": functools.partial(engine_subject, cross_kv="int8"),
}
