"""Recombined training text: new sentences built only from the source's words and word pairs, deterministic,
distinct, and never a held-out sentence."""

from __future__ import annotations

import random

import pytest

from voxserve.metrics.normalize import normalize_english
from voxserve.train.corpus import clean_sentence
from voxserve.train.textmix import MixShares, TextMixer, recombine

SOURCE = [
    "The committee examined the rifle, the cartridges and the paper bag found on the sixth floor.",
    "In the old prison the debtors were kept apart from the felons, at least in theory;",
    "the printers of the fifteenth century used a heavy black letter, which is hard to read today.",
    "He told the police that he had seen the man on the stairs, and then he left the building.",
    "Several witnesses said that the car stopped on the street before the shots were fired.",
    "The keeper of the prison was paid by fees, and the prisoners paid for their food and beds.",
    "A report on the security of the President was sent to the committee in the spring of that year.",
    "The type of the early books was cut by hand, and every letter was a little different from the next.",
]


def _keys(text: str) -> list[str]:
    return normalize_english(text).replace("'", "").split()


def _pairs(sentences):
    out = set()
    for s in sentences:
        k = _keys(s)
        out |= set(zip(k, k[1:], strict=False))
    return out


def test_kinds_read_like_their_source():
    mixer = TextMixer(SOURCE)
    rng = random.Random(0)
    words = {k for s in SOURCE for k in _keys(s)}
    pairs = _pairs(SOURCE)
    for _ in range(200):
        spliced = mixer.splice(rng)
        # Every neighbouring word pair of a splice is a pair of the source: it jumps only at a shared word.
        assert set(zip(_keys(spliced), _keys(spliced)[1:], strict=False)) <= pairs, spliced
        for text in (spliced, mixer.clauses(rng), mixer.words(rng)):
            assert set(_keys(text)) <= words, text
            assert text[0].isupper() and text.endswith((".", "?", "!")), text


def test_generate_is_new_distinct_deterministic_and_clean():
    out = recombine(SOURCE, 150, seed=1)
    assert out == recombine(SOURCE, 150, seed=1) and out != recombine(SOURCE, 150, seed=2)
    keys = [normalize_english(s) for s in out]
    assert len(set(keys)) == 150
    assert not set(keys) & {normalize_english(s) for s in SOURCE}
    assert all(clean_sentence(s) == s for s in out)
    # The shares choose the kinds: all splices read as source pairs, all word lists mostly do not.
    pairs = _pairs(SOURCE)
    only_splices = recombine(SOURCE, 40, seed=0, shares=MixShares(1, 0, 0))
    assert all(_pairs([s]) <= pairs for s in only_splices)
    only_words = recombine(SOURCE, 40, seed=0, shares=MixShares(0, 0, 1))
    assert sum(_pairs([s]) <= pairs for s in only_words) < 10


def test_held_out_sentences_are_never_made():
    source = ["the cat sat on the mat today.", "the dog sat on the rug today."]
    target = "The cat sat on the rug today."  # a splice of the two, at "sat" or "on" or "the"
    made = recombine(source, 60, seed=0, shares=MixShares(1, 1, 1))
    assert normalize_english(target) in {normalize_english(s) for s in made}  # reachable without exclusion
    for seed in range(5):
        made = recombine(source, 60, seed=seed, exclude=[target.upper()])
        assert normalize_english(target) not in {normalize_english(s) for s in made}


def test_bad_requests():
    with pytest.raises(ValueError, match="at least one sentence"):
        TextMixer(["one"])
    with pytest.raises(ValueError):
        recombine(SOURCE, -1)
    with pytest.raises(ValueError):
        MixShares(0, 0, 0)
    with pytest.raises(ValueError, match="could only make"):
        recombine(["la la.", "la la la."], 100)  # one word: at most a few dozen distinct sentences
