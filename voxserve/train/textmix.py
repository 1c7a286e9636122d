"""Varied English training text recombined from a corpus, so that a decoder cannot learn whole sentences.

A small model trained on a few ten thousand sentences, each heard many times, learns them by heart and then
"hears" a remembered continuation where the audio is unclear. This module makes many new sentences out of the
training sentences' own words, in three kinds:

- **splices**: a run of 2-6 words copied from one sentence, then, at a word that also occurs elsewhere, the run
  continues after that word in another sentence, and so on until a sentence ends. Every word pair is one the
  corpus has, so the text reads locally like it, but the sentence as a whole is new and its continuation cannot
  be predicted from its beginning (a random walk of a word-bigram model with long copied runs);
- **clause mixes**: the clauses (split at commas, semicolons and colons) of two or three sentences joined;
- **word lists**: 4-16 words drawn from the vocabulary, rare words more often than their frequency says (the
  square root of it), so the model hears every word of the corpus and must listen to get any of them right.

Only the sentences passed in are used: give it the training split, never the held-out one, and pass the held-out
sentences as ``exclude`` so that none of them is produced by chance. Output is deterministic for a seed and every
sentence passes ``corpus.clean_sentence``.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from ..metrics.normalize import normalize_english
from .corpus import clean_sentence

_ENDS = (".", "?", "!")
_CLAUSE_END = re.compile(r"[,;:]$")
_WORD = re.compile(r"[^a-z']+")


@dataclass(frozen=True)
class MixShares:
    """How the generated sentences divide among the kinds (normalised to sum to one)."""

    splice: float = 0.5
    clauses: float = 0.3
    words: float = 0.2

    def __post_init__(self) -> None:
        if min(self.splice, self.clauses, self.words) < 0 or self.splice + self.clauses + self.words <= 0:
            raise ValueError(f"shares must be >= 0 and not all zero, got {self}")


def _key(word: str) -> str:
    return _WORD.sub("", word.lower())


def _finish(words: list[str]) -> str:
    """Words joined into a sentence that starts with a capital and ends with a full stop (or its own ? / !)."""
    text = " ".join(words).strip()
    text = re.sub(r"[,;:\-]+$", "", text).rstrip()
    if not text.endswith(_ENDS):
        text += "."
    return text[0].upper() + text[1:] if text else text


class TextMixer:
    """New sentences from the words, word pairs and clauses of ``sentences`` (see the module docstring)."""

    def __init__(self, sentences: Sequence[str]) -> None:
        self.sentences = [s.split() for s in sentences if len(s.split()) >= 2]
        if not self.sentences:
            raise ValueError("give at least one sentence of two or more words to recombine")
        # Where each word (by its letters) occurs: (sentence, position); the splice jumps between these.
        self.where: dict[str, list[tuple[int, int]]] = {}
        for i, words in enumerate(self.sentences):
            for j, w in enumerate(words):
                if k := _key(w):
                    self.where.setdefault(k, []).append((i, j))
        # Clauses: the first of a sentence, the middle ones, and those that end one.
        self.first: list[list[str]] = []
        self.middle: list[list[str]] = []
        self.last: list[list[str]] = []
        for words in self.sentences:
            parts, current = [], []
            for w in words:
                current.append(w)
                if _CLAUSE_END.search(w):
                    parts.append(current)
                    current = []
            if current:
                parts.append(current)
            if len(parts) >= 2:
                self.first.append(parts[0])
                self.middle += parts[1:-1]
                self.last.append(parts[-1])
        # Vocabulary: each word's most frequent spelling (as written: case kept, punctuation stripped).
        spellings: dict[str, Counter[str]] = {}
        for words in self.sentences:
            for w in words:
                if k := _key(w):
                    spellings.setdefault(k, Counter())[w.strip('.,;:!?"()-')] += 1
        self.vocab = [c.most_common(1)[0][0] for c in spellings.values()]
        self.vocab_weights = [sum(c.values()) ** 0.5 for c in spellings.values()]

    def splice(self, rng: random.Random, *, max_words: int = 30) -> str:
        i = rng.randrange(len(self.sentences))
        j, out = 0, []
        while True:
            words = self.sentences[i]
            run = rng.randint(2, 6)
            out += words[j : j + run]
            j += run
            if j >= len(words) or len(out) >= max_words:
                return _finish(out)
            places = self.where.get(_key(out[-1]), [])
            if len(places) > 1:
                i2, j2 = rng.choice(places)
                if j2 + 1 < len(self.sentences[i2]):  # continue after the same word elsewhere
                    i, j = i2, j2 + 1

    def clauses(self, rng: random.Random) -> str:
        if not self.first:
            return self.splice(rng)
        parts = [rng.choice(self.first)]
        if self.middle and rng.random() < 0.4:
            parts.append(rng.choice(self.middle))
        parts.append(rng.choice(self.last))
        return _finish([w for part in parts for w in part])

    def words(self, rng: random.Random) -> str:
        n = rng.randint(4, 16)
        return _finish(rng.choices(self.vocab, weights=self.vocab_weights, k=n))

    def generate(
        self, n: int, *, seed: int = 0, shares: MixShares | None = None, exclude: Iterable[str] = ()
    ) -> list[str]:
        """``n`` distinct new sentences (distinct after normalisation), none equal to a source sentence or to
        one in ``exclude`` once normalised."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        shares = shares or MixShares()
        rng = random.Random(seed)
        kinds: list[Callable[[random.Random], str]] = [self.splice, self.clauses, self.words]
        weights = [shares.splice, shares.clauses, shares.words]
        seen = {normalize_english(" ".join(s)) for s in self.sentences}
        seen |= {normalize_english(s) for s in exclude}
        out: list[str] = []
        attempts = 0
        while len(out) < n:
            attempts += 1
            if attempts > 20 * n + 1000:
                raise ValueError(f"could only make {len(out)} of {n} distinct new sentences from this corpus")
            text = clean_sentence(rng.choices(kinds, weights)[0](rng))
            if text is None:
                continue
            key = normalize_english(text)
            if key and key not in seen:
                seen.add(key)
                out.append(text)
        return out


def recombine(
    sentences: Sequence[str],
    n: int,
    *,
    seed: int = 0,
    exclude: Iterable[str] = (),
    shares: MixShares | None = None,
) -> list[str]:
    """``n`` new English sentences recombined from ``sentences`` (see the module docstring)."""
    return TextMixer(sentences).generate(n, seed=seed, shares=shares, exclude=exclude)


__all__ = ["MixShares", "TextMixer", "recombine"]
