"""Word and character error rates: Levenshtein alignment with substitution, deletion and insertion counts.

Each row of the edit-distance table is computed as whole-array numpy operations (insertions along a row are a
running minimum), so aligning long utterances stays fast; the table is kept for the backtrace that splits the
distance into substitutions, deletions and insertions. Corpus rates add the counts over all items, then divide
(the usual definition), rather than averaging per-item rates.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from .normalize import CHARACTER_LANGUAGES, scoring_units


@dataclass(frozen=True)
class ErrorCounts:
    """Alignment counts of one item or of a whole set (counts add up with ``+``)."""

    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0
    hits: int = 0

    @property
    def reference_length(self) -> int:
        return self.substitutions + self.deletions + self.hits

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def rate(self) -> float:
        """errors / reference length; 0 for an empty reference matched by an empty hypothesis, inf if not."""
        n = self.reference_length
        if n == 0:
            return 0.0 if self.errors == 0 else float("inf")
        return self.errors / n

    def __add__(self, other: ErrorCounts) -> ErrorCounts:
        return ErrorCounts(
            self.substitutions + other.substitutions,
            self.deletions + other.deletions,
            self.insertions + other.insertions,
            self.hits + other.hits,
        )

    def to_dict(self) -> dict[str, float | int]:
        return {
            "substitutions": self.substitutions,
            "deletions": self.deletions,
            "insertions": self.insertions,
            "hits": self.hits,
            "reference_length": self.reference_length,
            "rate": self.rate,
        }


def _as_ids(ref: Sequence[Hashable], hyp: Sequence[Hashable]) -> tuple[np.ndarray, np.ndarray]:
    vocab: dict[Hashable, int] = {}
    r = np.array([vocab.setdefault(t, len(vocab)) for t in ref], dtype=np.int64)
    h = np.array([vocab.setdefault(t, len(vocab)) for t in hyp], dtype=np.int64)
    return r, h


def align(ref: Sequence[Hashable], hyp: Sequence[Hashable]) -> ErrorCounts:
    """Minimum-edit alignment of two token sequences. Among equally short alignments the backtrace prefers
    a match or substitution, then a deletion, then an insertion."""
    n, m = len(ref), len(hyp)
    if n == 0 or m == 0:
        return ErrorCounts(deletions=n, insertions=m)
    r, h = _as_ids(ref, hyp)
    cols = np.arange(m + 1, dtype=np.int64)
    table = np.empty((n + 1, m + 1), dtype=np.int64)
    table[0] = cols
    for i in range(1, n + 1):
        prev = table[i - 1]
        best = np.empty(m + 1, dtype=np.int64)
        best[0] = i
        best[1:] = np.minimum(prev[:-1] + (h != r[i - 1]), prev[1:] + 1)
        # An insertion moves one column right at cost 1: D[j] = min_k<=j (best[k] + j - k).
        table[i] = np.minimum.accumulate(best - cols) + cols
    s = d = ins = hits = 0
    i, j = n, m
    while i > 0 or j > 0:
        if i > 0 and j > 0 and table[i, j] == table[i - 1, j - 1] + (r[i - 1] != h[j - 1]):
            if r[i - 1] == h[j - 1]:
                hits += 1
            else:
                s += 1
            i, j = i - 1, j - 1
        elif i > 0 and table[i, j] == table[i - 1, j] + 1:
            d += 1
            i -= 1
        else:
            ins += 1
            j -= 1
    return ErrorCounts(substitutions=s, deletions=d, insertions=ins, hits=hits)


def item_errors(reference: str, hypothesis: str, language: str = "en") -> ErrorCounts:
    """Normalise both texts for ``language`` and align their words (or characters for Chinese and other
    unspaced scripts)."""
    return align(scoring_units(reference, language), scoring_units(hypothesis, language))


def corpus_errors(
    references: Iterable[str], hypotheses: Iterable[str], language: str = "en"
) -> tuple[ErrorCounts, list[ErrorCounts]]:
    """Total and per-item counts over paired texts (the lists must be the same length)."""
    refs, hyps = list(references), list(hypotheses)
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    items = [item_errors(r, h, language) for r, h in zip(refs, hyps, strict=True)]
    total = sum(items, ErrorCounts())
    return total, items


def metric_name(language: str) -> str:
    """ "CER" for languages scored per character, else "WER"."""
    return "CER" if language in CHARACTER_LANGUAGES else "WER"


__all__ = ["ErrorCounts", "align", "corpus_errors", "item_errors", "metric_name"]
