"""What the benchmark measures: a *subject* is anything that turns a batch of log-mel windows into exactly
``n`` greedy tokens per window, for the prompt <|startoftranscript|><|en|><|transcribe|><|notimestamps|>
with end-of-text suppressed.

voxserve's side is built here; the peers (transformers, CTranslate2) are in ``peers/``. Every side is a
:class:`Subject`; the suites time ``Subject.decode`` and check that it really produced ``n`` tokens per window.

Plugging in another voxserve path (the fast engine) takes one function: wrap it with
:func:`subject_from_decoder`, e.g.::

    def engine_subject(hf_dir, tok, device, precision):
        engine = Engine(...)                                  # load the same HF directory
        def decode(mel, n):                                   # mel [B, n_mels, 3000] on `device`
            return [list(r.tokens) for r in engine.decode_windows(mel, sample_len=n, suppress=(tok.eot,))]
        return subject_from_decoder("voxserve-engine", decode, device=device, precision=precision,
                                    n_mels=..., config={...})

and add it to :data:`VOXSERVE_SUBJECTS`; ``voxserve bench --subject engine`` then measures it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..tokenizer import Tokenizer

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


def subject_from_decoder(
    name: str,
    decode: DecodeFn,
    *,
    device: str | torch.device,
    precision: str,
    n_mels: int,
    side: str = "voxserve",
    config: dict[str, Any] | None = None,
) -> Subject:
    """A subject from any callable that decodes a batch of mels into ``n`` token ids per window: the one
    place a new decoding path (the fast engine) plugs into the benchmark."""
    if side not in ("voxserve", "peer"):
        raise ValueError(f"side must be 'voxserve' or 'peer', got {side!r}")
    return Subject(name, side, torch.device(device), precision, n_mels, decode, dict(config or {}))


def prompt_tokens(tok: Tokenizer) -> tuple[int, ...]:
    """<|startoftranscript|><|en|><|transcribe|><|notimestamps|> for the benchmark's tokenizer."""
    return tok.with_options(language="en", task="transcribe").sot_sequence_including_notimestamps


def reference_subject(hf_dir: Path, tok: Tokenizer, device: torch.device, precision: str) -> Subject:
    """voxserve's reference decoder (``WindowDecoder``, eager) on the weights in ``hf_dir``: greedy,
    ``sample_len = n``, end-of-text in ``suppress_tokens``, no blank suppression, no timestamps."""
    from ..config import resolve_dtype
    from ..decoding.decode import WindowDecoder
    from ..decoding.options import DecodingOptions
    from ..model.load import load_checkpoint

    model, _ = load_checkpoint(hf_dir, device=device, dtype=resolve_dtype(precision))
    decoders: dict[int, WindowDecoder] = {}

    def decoder_for(n: int) -> WindowDecoder:
        if n not in decoders:
            options = DecodingOptions(
                language="en",
                task="transcribe",
                temperature=0.0,
                sample_len=n,
                suppress_tokens=(tok.eot,),
                suppress_blank=False,
                without_timestamps=True,
            )
            decoders[n] = WindowDecoder(model, tok, options)
        return decoders[n]

    @torch.inference_mode()
    def decode(mel: Tensor, n: int) -> list[list[int]]:
        return [list(r.tokens) for r in decoder_for(n).decode(mel)]

    return subject_from_decoder(
        "voxserve-reference",
        decode,
        device=device,
        precision=str(resolve_dtype(precision)).removeprefix("torch."),
        n_mels=model.dims.n_mels,
        config={
            "path": "voxserve.decoding.decode.WindowDecoder (eager reference)",
            "torch": torch.__version__,
        },
    )


# Name given to --subject -> builder(hf_dir, tokenizer, device, precision). The fast engine joins here.
VOXSERVE_SUBJECTS: dict[str, Callable[[Path, Tokenizer, torch.device, str], Subject]] = {
    "reference": reference_subject,
}
