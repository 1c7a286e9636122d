"""CTranslate2 (faster-whisper's engine) as a peer on the CPU: the benchmark's HF directory converted once with
CTranslate2's transformers converter (float32 weights), then loaded with the compute type under test ("int8"
quantizes at load, as faster-whisper's int8 mode does).

The converter writes vocabulary.json from the directory's tokenizer files, so the special tokens carry their
names. CTranslate2 caps the tokens it samples at min(max_length / 2, max_length - prompt length + 1), so
``max_length`` is chosen to let exactly ``n`` through; end-of-text is in ``suppress_tokens``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from torch import Tensor

from ...tokenizer import Tokenizer
from ..subjects import Subject, prompt_tokens, subject_from_decoder
from ..weights import BenchError

_MARKER = "voxserve-bench-ct2.json"


def _import_ct2():  # noqa: ANN202 - returns the module
    try:
        import ctranslate2
    except ImportError:
        raise BenchError(
            "the CTranslate2 peer needs the 'ctranslate2' package: pip install ctranslate2 "
            "(or leave it out with --peers)"
        ) from None
    return ctranslate2


def converted_dir(hf_dir: Path) -> Path:
    """``hf_dir`` converted to CTranslate2 (float32) beside it; converted on first use."""
    ctranslate2 = _import_ct2()
    out = hf_dir.parent / f"{hf_dir.name}-ct2"
    source = json.loads((hf_dir / "voxserve-bench.json").read_text(encoding="utf-8"))
    marker = {"source": source, "ctranslate2": ctranslate2.__version__}
    if (out / _MARKER).is_file() and json.loads((out / _MARKER).read_text(encoding="utf-8")) == marker:
        return out
    from ctranslate2.converters import TransformersConverter

    if out.exists():
        shutil.rmtree(out)
    TransformersConverter(str(hf_dir)).convert(str(out), quantization=None, force=True)
    vocab = json.loads((out / "vocabulary.json").read_text(encoding="utf-8"))
    if "<|startoftranscript|>" not in vocab:
        raise BenchError(
            f"{out}/vocabulary.json has no named special tokens; CTranslate2 cannot find the prompt"
        )
    (out / _MARKER).write_text(json.dumps(marker) + "\n", encoding="utf-8")
    return out


def max_length_for(n: int, prompt_length: int) -> int:
    """The ``max_length`` under which CTranslate2's Whisper samples exactly ``n`` tokens after a prompt of
    ``prompt_length`` tokens: it allows min(max_length // 2, max_length - (prompt_length - 1))."""
    return max(2 * n, n + prompt_length - 1)


def ct2_subject(hf_dir: Path, tok: Tokenizer, compute_type: str, threads: int) -> Subject:
    """CTranslate2's Whisper on the CPU with ``compute_type`` ("int8", "float32", ...), ``threads`` intra-op
    threads and one inter-op worker (one batch at a time, like the other subjects)."""
    ctranslate2 = _import_ct2()
    supported = ctranslate2.get_supported_compute_types("cpu")
    if compute_type not in supported:
        raise BenchError(f"CTranslate2 on this CPU supports {sorted(supported)}, not {compute_type!r}")
    model = ctranslate2.models.Whisper(
        str(converted_dir(hf_dir)),
        device="cpu",
        compute_type=compute_type,
        intra_threads=threads,
        inter_threads=1,
    )
    prompt = list(prompt_tokens(tok))

    def decode(mel: Tensor, n: int) -> list[list[int]]:
        features = ctranslate2.StorageView.from_array(mel.detach().cpu().contiguous().numpy())
        results = model.generate(
            features,
            [prompt] * mel.shape[0],
            beam_size=1,
            max_length=max_length_for(n, len(prompt)),
            suppress_tokens=[tok.eot],
            suppress_blank=False,
        )
        return [list(r.sequences_ids[0]) for r in results]

    return subject_from_decoder(
        f"ctranslate2-{compute_type}",
        decode,
        device="cpu",
        precision=compute_type,
        n_mels=model.n_mels,
        side="peer",
        config={
            "ctranslate2": ctranslate2.__version__,
            "compute_type": compute_type,
            "intra_threads": threads,
            "inter_threads": 1,
            "eot_suppression": "suppress_tokens=[eot], max_length chosen for exactly n sampled tokens",
        },
    )
