"""The one spoken spelling of numbers that voxserve's training text and its WER normaliser share.

American style, as LJSpeech's normalised transcripts write it: no "and" inside a number ("one hundred
ninety-nine"), hyphenated tens ("twenty-three"), years read in pairs ("eighteen oh three", "nineteen hundred",
"twenty twenty-three"), phone digits one by one with "zero". Text generators spell numbers with these functions
and the normaliser turns digits into the same words, so "23" and "twenty-three" score as the same word.
"""

from __future__ import annotations

ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen"
).split()
TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
SCALES = ((10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (1000, "thousand"))

# Irregular ordinals; the rest add "th" (after turning a final "y" into "ie").
_ORDINAL_WORDS = {
    "one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth", "nine": "ninth",
    "twelve": "twelfth",
}  # fmt: skip


def _below_thousand(n: int) -> str:
    words = []
    hundreds, rest = divmod(n, 100)
    if hundreds:
        words.append(f"{ONES[hundreds]} hundred")
    if rest >= 20:
        tens, ones = divmod(rest, 10)
        words.append(TENS[tens] + (f"-{ONES[ones]}" if ones else ""))
    elif rest or not hundreds:
        words.append(ONES[rest])
    return " ".join(words)


def cardinal(n: int) -> str:
    """123 -> "one hundred twenty-three"; negative numbers start with "minus"."""
    if not isinstance(n, int):
        raise TypeError(f"cardinal() takes an int, got {type(n).__name__}")
    if n < 0:
        return "minus " + cardinal(-n)
    if n >= 1000 * SCALES[0][0]:
        return digits(str(n))  # beyond the scale words: read digit by digit
    words = []
    for value, name in SCALES:
        if n >= value:
            words.append(f"{_below_thousand(n // value)} {name}")
            n %= value
    if n or not words:
        words.append(_below_thousand(n))
    return " ".join(words)


def ordinal(n: int) -> str:
    """27 -> "twenty-seventh"."""
    words = cardinal(n)
    head, sep, last = words.rpartition("-") if "-" in words.split(" ")[-1] else words.rpartition(" ")
    if last in _ORDINAL_WORDS:
        last = _ORDINAL_WORDS[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return head + sep + last


def year(n: int) -> str:
    """A year as people say it: 1066 "ten sixty-six", 1800 "eighteen hundred", 1803 "eighteen oh three",
    2005 "two thousand five", 2023 "twenty twenty-three"; other values are read as cardinals."""
    if 2000 <= n <= 2009 or not 1000 <= n <= 2099:
        return cardinal(n)
    high, low = divmod(n, 100)
    if low == 0:
        return f"{cardinal(high)} hundred"
    if low < 10:
        return f"{cardinal(high)} oh {ONES[low]}"
    return f"{cardinal(high)} {cardinal(low)}"


def digits(s: str) -> str:
    """ "5550123" -> "five five five zero one two three" (phone numbers, codes)."""
    if not s.isdigit():
        raise ValueError(f"digits() takes a string of digits, got {s!r}")
    return " ".join(ONES[int(c)] for c in s)


def decimal(integer: str, fraction: str) -> str:
    """("3", "14") -> "three point one four"."""
    return f"{cardinal(int(integer))} point {digits(fraction)}"


__all__ = ["cardinal", "decimal", "digits", "ordinal", "year"]
