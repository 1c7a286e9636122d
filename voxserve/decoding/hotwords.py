"""Hotword biasing: phrases the decoder should prefer, boosted inside the search (shallow fusion).

Each phrase is tokenised (with and without a leading space, as written and capitalised) into a token trie.
At every step, for each row, the deepest trie nodes whose prefix equals the last tokens sampled are active,
and the tokens that continue them get the phrase's weight added to their logits; when no phrase is under way
the root is active, so the first token of a phrase gets its weight anywhere. Continuing a phrase already begun
is therefore as cheap as starting it was, which is what lets an acoustically close word flip to the hotword,
and a row inside a phrase is not pulled towards starting another one. A row's bias is the largest weight among
the active edges that lead to a token (weights do not add up across overlapping phrases).

The filter runs on whole batches: one comparison per trie depth, no Python loop over rows, so it serves greedy,
sampled and beam decoding alike. The batching engine's per-slot policy has no per-step token history, so
hotword requests decode on the reference decoder (:class:`HotwordDecoder`); the server routes them there.
Shapes: logits [B, V], tokens [B, T] as in ``logits.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..model.whisper import Whisper
from ..tokenizer import Tokenizer
from .decode import WindowDecoder
from .logits import LogitFilter
from .options import DecodingOptions, OptionsError

# Logit boost per hotword token when a phrase gives none: about the gap between a model's first and second
# choice on an uncertain word, small enough that a clearly spoken different word still wins.
DEFAULT_WEIGHT = 2.0
MAX_WEIGHT = 20.0  # larger boosts force the phrase whatever was said; refuse them as probably a mistake
# The trie's work grows with the square of a phrase's length (a 320 kB phrase exhausted the server's memory):
# a hotword is a name or a term, never a paragraph.
MAX_PHRASE_CHARS = 200


@dataclass(frozen=True)
class Hotword:
    phrase: str
    weight: float = DEFAULT_WEIGHT

    def __post_init__(self) -> None:
        if not self.phrase.strip():
            raise OptionsError("a hotword must not be empty")
        if len(self.phrase) > MAX_PHRASE_CHARS:
            raise OptionsError(f"a hotword has at most {MAX_PHRASE_CHARS} characters, got {len(self.phrase)}")
        if not (0.0 < self.weight <= MAX_WEIGHT):
            raise OptionsError(
                f"hotword weight must be in (0, {MAX_WEIGHT}], got {self.weight} for {self.phrase!r}"
            )


def _variants(phrase: str) -> list[str]:
    phrase = " ".join(phrase.split())
    forms = {phrase, phrase[:1].upper() + phrase[1:]}
    return sorted({v for f in forms for v in (f, " " + f)})


class HotwordTrie:
    """Token trie of the hotwords, flattened per depth into tensors for batched matching.

    ``levels[k]`` holds every edge leaving a node at depth k: prefixes [E, k] (the tokens leading to the node),
    next [E] (the edge's token) and weight [E].
    """

    def __init__(self, hotwords: Sequence[Hotword], tokenizer: Tokenizer) -> None:
        children: dict[tuple[int, ...], dict[int, float]] = {}
        for hw in hotwords:
            for text in _variants(hw.phrase):
                ids = tokenizer.encode(text)
                for k, token in enumerate(ids):
                    edges = children.setdefault(tuple(ids[:k]), {})
                    edges[token] = max(edges.get(token, 0.0), hw.weight)
        by_depth: dict[int, list[tuple[tuple[int, ...], int, float]]] = {}
        for prefix, edges in children.items():
            for token, weight in edges.items():
                by_depth.setdefault(len(prefix), []).append((prefix, token, weight))
        self.levels: list[tuple[int, Tensor, Tensor, Tensor]] = []
        for k in sorted(by_depth):
            rows = by_depth[k]
            self.levels.append(
                (
                    k,
                    torch.tensor([p for p, _, _ in rows], dtype=torch.long).reshape(len(rows), k),
                    torch.tensor([t for _, t, _ in rows], dtype=torch.long),
                    torch.tensor([w for _, _, w in rows], dtype=torch.float32),
                )
            )

    def to(self, device: torch.device) -> HotwordTrie:
        self.levels = [(k, p.to(device), t.to(device), w.to(device)) for k, p, t, w in self.levels]
        return self


class HotwordBias(LogitFilter):
    """Adds each row's hotword bias to its logits (see the module docstring)."""

    def __init__(self, trie: HotwordTrie, sample_begin: int) -> None:
        self.trie = trie
        self.sample_begin = sample_begin

    def bias(self, tokens: Tensor, n_vocab: int) -> Tensor:
        """tokens [B, T] -> bias [B, V] for the next token."""
        sampled = tokens[:, self.sample_begin :]
        b, n = sampled.shape
        bonus = torch.zeros(b, n_vocab, device=tokens.device)
        for k, prefixes, nxt, weight in self.trie.levels:
            if k > n:
                break
            if k == 0:
                match = torch.ones(b, len(nxt), dtype=torch.bool, device=tokens.device)
            else:
                # [B, k, 1] against [1, k, E]: the last k sampled tokens equal the edge's prefix
                match = (sampled[:, n - k :, None] == prefixes.T[None]).all(dim=1)
            level = torch.zeros(b, n_vocab, device=tokens.device)
            level.scatter_reduce_(1, nxt.expand(b, -1), match.float() * weight[None], reduce="amax")
            # Levels go from shallow to deep: a row inside a phrase is biased only to continue it (its deepest
            # match), not to start another phrase, which would make it stutter first tokens.
            bonus = torch.where(match.any(dim=1, keepdim=True), level, bonus)
        return bonus

    def apply(self, logits: Tensor, tokens: Tensor) -> None:
        logits += self.bias(tokens, logits.shape[1]).to(logits.dtype)


class HotwordDecoder(WindowDecoder):
    """The reference window decoder with a hotword bias ahead of the other logit filters."""

    def __init__(
        self, model: Whisper, tokenizer: Tokenizer, options: DecodingOptions, hotwords: Sequence[Hotword]
    ) -> None:
        self.hotwords = tuple(hotwords)
        super().__init__(model, tokenizer, options)

    def _filters(self) -> list[LogitFilter]:
        trie = HotwordTrie(self.hotwords, self.tokenizer).to(self.model.device)
        return [HotwordBias(trie, self.sample_begin), *super()._filters()]


__all__ = ["DEFAULT_WEIGHT", "Hotword", "HotwordBias", "HotwordDecoder", "HotwordTrie"]
