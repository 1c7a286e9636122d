"""The accuracy gate: how far a reduced-precision model's next-token distributions drift from the reference's.

Both models score the same windows under teacher forcing (the same token sequences, so one early difference
cannot snowball into unrelated text); at every position we take KL(reference || candidate) of the next-token
distributions and whether their most likely tokens agree. A quantized engine is built only when the mean KL
stays under a threshold; the build prints the report either way.

Default threshold: 0.05 nats per token, chosen from measurements (random weights, teacher forcing on
HiFi-TTS audio; mean KL / top-1 agreement; "tiny" = 384 wide, 4+4 layers; TINY = 64 wide, 2+2):

    weights               int8      int8-dyn   fp8       bf16      4-bit     3-bit    2-bit
    TINY, std 0.02        6e-7      1e-6       1.4e-5    3e-7      2e-4      7e-4     0.0057
    TINY, std 0.1         7e-5      8e-5       0.0011    2e-5      0.017     0.068    0.36
    TINY, std 0.2         7e-4      1e-3       0.012     2e-4      0.15      0.84     2.0
    tiny, std 0.02        3e-5      4e-5       5e-4      5e-6      0.0078    0.043    0.12
    tiny, std 0.1         0.0018    0.0025     0.029     4e-4      0.40      1.3      3.1

Every 8-bit format stays under 0.03 and every 4-bit-or-coarser model whose distributions carry information
(std >= 0.1) lands at 0.15 or more; 0.05 admits the first with margin and refuses the second. Two limits of
the measurement: with the usual std-0.02 random weights (the benchmarks') the next-token distributions are
nearly uniform and everything looks close (even 2-bit), so the gate means something only for a model whose
predictions carry information; and a trained model is more confident than any of these, which shrinks the
KL of noise spread over the vocabulary but makes the few uncertain tokens count. Published figures for
language models put 8-bit weight quantization at KL 0.001-0.01 and 4-bit at 0.02-0.05 and above; a trained
Whisper (lower-entropy predictions than a language model) should pass fp8 and int8 well under 0.05. The
threshold is a guard against broken quantization (wrong scales, clipped outliers, a bad layer), not a WER
proxy; ``voxserve build`` may take a stricter one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from ..model.whisper import Whisper
from .calibrate import _zip_strict

DEFAULT_MAX_MEAN_KL = 0.05


@dataclass(frozen=True)
class DivergenceReport:
    mean_kl: float  # mean over all scored positions of KL(reference || candidate), nats
    p99_kl: float  # 99th percentile of the per-position KL
    max_kl: float
    top1_agreement: float  # fraction of positions where both models' most likely next token is the same
    n_tokens: int  # positions scored
    n_windows: int

    def summary(self) -> str:
        return (
            f"mean KL {self.mean_kl:.3g} nats/token, p99 {self.p99_kl:.3g}, max {self.max_kl:.3g}, "
            f"top-1 agreement {100 * self.top1_agreement:.2f}% over {self.n_tokens} tokens "
            f"in {self.n_windows} windows"
        )

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


class AccuracyGateError(RuntimeError):
    """A candidate model diverges from the reference beyond the threshold; carries the measured report."""

    def __init__(self, report: DivergenceReport, max_mean_kl: float) -> None:
        self.report, self.max_mean_kl = report, max_mean_kl
        super().__init__(
            f"accuracy gate failed: mean KL {report.mean_kl:.3g} exceeds the limit {max_mean_kl:.3g} "
            f"({report.summary()})"
        )


def _logits(model: Whisper, mel: Tensor, tokens: Sequence[int]) -> Tensor:
    features = model.encoder(mel[None].to(device=model.device, dtype=model.dtype))
    t = torch.tensor([list(tokens)], dtype=torch.long, device=model.device)
    return model.decoder.forward_full(t, features)[0].float()  # [T, V]


@torch.inference_mode()
def measure_divergence(
    reference: Whisper,
    candidate: Whisper,
    mels: Iterable[Tensor],
    token_sequences: Iterable[Sequence[int]],
) -> DivergenceReport:
    """Score windows ``mels`` (each [n_mels, frames]) with their token sequences (prompt included) through
    both models; every position of every sequence counts. The models may sit on different devices/dtypes."""
    if reference.dims != candidate.dims:
        raise ValueError("reference and candidate have different dimensions")
    kls, agree, n_windows = [], 0, 0
    for mel, seq in _zip_strict(mels, token_sequences):
        if not 0 < len(seq) <= reference.dims.n_text_ctx:
            raise ValueError(
                f"token sequences must hold 1..{reference.dims.n_text_ctx} tokens, got {len(seq)}"
            )
        ref = torch.log_softmax(_logits(reference, mel, seq), dim=-1)
        cand = torch.log_softmax(_logits(candidate, mel, seq).to(ref.device), dim=-1)
        kl = (
            (ref.exp() * (ref - cand)).sum(dim=-1).clamp(min=0.0)
        )  # rounding can make a ~0 KL slightly negative
        kls.append(kl.double().cpu())
        agree += int((ref.argmax(dim=-1) == cand.argmax(dim=-1)).sum())
        n_windows += 1
    if n_windows == 0:
        raise ValueError("no windows to score")
    all_kl = torch.cat(kls)
    if not bool(torch.isfinite(all_kl).all()):
        mean = p99 = peak = math.inf  # NaN/inf logits: the candidate is broken, report it as infinitely far
    else:
        mean, p99, peak = float(all_kl.mean()), float(torch.quantile(all_kl, 0.99)), float(all_kl.max())
    return DivergenceReport(
        mean_kl=mean,
        p99_kl=p99,
        max_kl=peak,
        top1_agreement=agree / all_kl.numel(),
        n_tokens=all_kl.numel(),
        n_windows=n_windows,
    )


def check_accuracy(report: DivergenceReport, max_mean_kl: float = DEFAULT_MAX_MEAN_KL) -> DivergenceReport:
    """Return ``report`` when its mean KL is within ``max_mean_kl``; raise AccuracyGateError otherwise."""
    if not max_mean_kl > 0:
        raise ValueError(f"max_mean_kl must be positive, got {max_mean_kl}")
    if not report.mean_kl <= max_mean_kl:  # NaN fails too
        raise AccuracyGateError(report, max_mean_kl)
    return report
