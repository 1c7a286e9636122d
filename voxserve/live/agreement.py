"""Stable-prefix commit for partial results (LocalAgreement over consecutive hypotheses).

Each partial re-decodes the whole utterance so far. A unit of text is committed once two consecutive hypotheses
agree on it and on every unit before it; committed units never change during the utterance (the final decode at
the end of speech replaces the partials as a whole). The uncommitted rest of the latest hypothesis is the tail
a client shows as provisional text. Units are words, except in scripts written without spaces (Chinese,
Japanese, Thai, ...), where every character is a unit, so Mandarin partials commit too.
"""

from __future__ import annotations

import re

# Characters of unspaced scripts: CJK ideographs and kana, Hangul syllables stay words; Thai, Lao, Khmer, Myanmar.
_UNSPACED = "\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_UNITS = re.compile(rf"\s*(?:[{_UNSPACED}]|[^\s{_UNSPACED}]+)")


def units(text: str) -> list[str]:
    """``text`` cut into units, each with the whitespace before it, so that joining them gives the text back."""
    return _UNITS.findall(text)


class StablePrefix:
    def __init__(self) -> None:
        self.committed: list[str] = []  # units with their leading whitespace
        self._previous: list[str] | None = None

    @property
    def text(self) -> str:
        return "".join(self.committed).strip()

    def update(self, hypothesis: str) -> tuple[str, str]:
        """Take the latest hypothesis; returns (newly committed text, to append to what was committed before;
        the provisional tail, to show right after the committed text). Both keep their leading space."""
        found = units(hypothesis.strip())
        keys = [u.strip() for u in found]
        n = len(self.committed)
        new: list[str] = []
        if self._previous is not None and keys[:n] == [u.strip() for u in self.committed]:
            agree = 0
            for a, b in zip(self._previous, keys, strict=False):
                if a != b:
                    break
                agree += 1
            new = found[n:agree] if agree > n else []
        self._previous = keys
        self.committed += new
        delta = "".join(new)
        if not n:
            delta = delta.lstrip()
        # When the latest hypothesis contradicts committed units, show its units past the committed count.
        tail = "".join(found[len(self.committed) :])
        return delta, tail if self.committed else tail.lstrip()
