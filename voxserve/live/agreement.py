"""Stable-prefix commit for partial results (LocalAgreement over consecutive hypotheses).

Each partial re-decodes the whole utterance so far. A word is committed once two consecutive hypotheses agree
on it and on every word before it; committed words never change during the utterance (the final decode at the
end of speech replaces the partials as a whole). The uncommitted rest of the latest hypothesis is the tail a
client shows as provisional text.
"""

from __future__ import annotations


class StablePrefix:
    def __init__(self) -> None:
        self.committed: list[str] = []
        self._previous: list[str] | None = None

    @property
    def text(self) -> str:
        return " ".join(self.committed)

    def update(self, hypothesis: str) -> tuple[str, str]:
        """Take the latest hypothesis; returns (newly committed text, to append as is; provisional tail)."""
        words = hypothesis.split()
        n = len(self.committed)
        new: list[str] = []
        if self._previous is not None and words[:n] == self.committed:
            agree = 0
            for a, b in zip(self._previous, words, strict=False):
                if a != b:
                    break
                agree += 1
            new = words[n:agree] if agree > n else []
        self._previous = words
        self.committed += new
        delta = " ".join(new)
        if delta and n:
            delta = " " + delta
        # When the latest hypothesis contradicts committed words, show its words past the committed count.
        tail = " ".join(words[len(self.committed) :])
        return delta, tail
