"""Text corpora for synthetic speech: reading, cleaning, and the train / held-out split by sentence.

A corpus file is either LJSpeech's ``metadata.csv`` (``id|raw|normalized``: the normalised column, which spells
numbers out, is used) or plain text with one sentence a line. Held-out sentences are chosen by seeded shuffle
after de-duplication on normalised text, so no held-out sentence is ever spoken in the training set, not even
with different case or punctuation.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from ..metrics.normalize import normalize

# Longest sentence kept (in characters): at the slowest speaking rate it still fits one 30 s window.
MAX_CHARS = {"en": 260, "zh": 80}


class CorpusError(ValueError):
    """A corpus file is missing, empty or not in a known format."""


def read_corpus(path: str | Path) -> list[str]:
    """Sentences of a corpus file, in file order (see the module docstring for the formats)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise CorpusError(f"corpus not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CorpusError(f"{path}: unreadable corpus ({e})") from None
    lines = [line for line in lines if line.strip()]
    if not lines:
        raise CorpusError(f"{path}: the corpus is empty")
    if all(line.count("|") == 2 for line in lines[:50]):
        return [line.split("|")[2] for line in lines if line.count("|") == 2]
    return lines


def clean_sentence(text: str, language: str = "en") -> str | None:
    """Whitespace collapsed; None when the sentence cannot be used as speech-recognition target text: empty,
    too long for one window, or holding digits or symbols whose spoken form is ambiguous."""
    text = " ".join(text.replace("\u2019", "'").split())
    if not text or len(text) > MAX_CHARS.get(language, 260):
        return None
    if re.search(r"[0-9#$%&*+/<=>@\\^_`|~\[\]{}]", text):
        return None
    if language == "en" and not re.search(r"[A-Za-z]", text):
        return None
    return text


def split_holdout(
    sentences: list[str],
    *,
    language: str = "en",
    holdout: int | None = None,
    holdout_frac: float | None = None,
    seed: int = 0,
) -> tuple[list[str], list[str]]:
    """(train, held-out): duplicates (same normalised text) are dropped, then ``holdout`` sentences (or the
    fraction ``holdout_frac``) are drawn at random, seeded, to be held out."""
    if holdout is not None and holdout_frac is not None:
        raise ValueError("give holdout or holdout_frac, not both")
    if holdout_frac is not None and not 0.0 <= holdout_frac < 1.0:
        raise ValueError(f"holdout_frac must be in [0, 1), got {holdout_frac}")
    if holdout is not None and holdout < 0:
        raise ValueError(f"holdout must be >= 0, got {holdout}")
    unique: dict[str, str] = {}
    for s in sentences:
        unique.setdefault(normalize(s, language), s)
    unique.pop("", None)
    items = list(unique.values())
    n = holdout if holdout is not None else round(len(items) * (holdout_frac or 0.0))
    if n > len(items):
        raise ValueError(f"cannot hold out {n} sentences from {len(items)} distinct ones")
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    held = set(order[:n])
    train = [s for i, s in enumerate(items) if i not in held]
    heldout = [s for i, s in enumerate(items) if i in held]
    return train, heldout


__all__ = ["CorpusError", "clean_sentence", "read_corpus", "split_holdout"]
