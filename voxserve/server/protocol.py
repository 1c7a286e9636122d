"""The request fields of the audio API beyond the file, turned into validated :class:`Params`.

OpenAI's fields (model, language, prompt, response_format, temperature, timestamp_granularities[], stream) plus
voxserve's own: ``hotwords`` (repeatable; ``phrase`` or ``phrase:weight``; OpenAI's newer ``keywords`` field
is read the same way), ``priority`` (realtime | interactive | batch) and ``deadline_ms``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Literal

from ..decoding.hotwords import MAX_PHRASE_CHARS, Hotword
from ..decoding.options import OptionsError
from ..engine.types import Priority
from ..live.session import MAX_PROMPT_CHARS  # one limit for HTTP requests and live sessions
from ..tokenizer import Tokenizer
from .errors import APIError
from .service import Params

ResponseFormat = Literal["json", "text", "srt", "verbose_json", "vtt", "tsv"]
PriorityName = Literal["realtime", "interactive", "batch"]
Granularity = Literal["word", "segment"]

MAX_HOTWORDS = 100  # each adds trie edges the decoder checks every step
MAX_HOTWORD_CHARS = MAX_PHRASE_CHARS  # the library's limit, checked here for a precise 400 message

CONTENT_TYPES = {
    "json": "application/json",
    "verbose_json": "application/json",
    "text": "text/plain; charset=utf-8",
    "srt": "text/plain; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
    "tsv": "text/tab-separated-values; charset=utf-8",
}


def parse_hotwords(items: Sequence[str]) -> tuple[Hotword, ...]:
    out = []
    for raw in items:
        for item in raw.split("\n"):  # one form field may carry several lines
            item = item.strip()
            if not item:
                continue
            phrase, sep, weight = item.rpartition(":")
            if not sep:
                phrase, weight = item, ""
            if len(phrase) > MAX_HOTWORD_CHARS:
                raise APIError(
                    400,
                    f"hotwords: a phrase has at most {MAX_HOTWORD_CHARS} characters, got {len(phrase)}",
                    code="invalid_hotword",
                    param="hotwords",
                )
            try:
                out.append(
                    Hotword(phrase.strip(), float(weight)) if weight.strip() else Hotword(phrase.strip())
                )
            except ValueError as e:
                raise APIError(
                    400, f"hotwords: {item!r}: {e}", code="invalid_hotword", param="hotwords"
                ) from None
    if len(out) > MAX_HOTWORDS:
        raise APIError(
            400, f"hotwords: at most {MAX_HOTWORDS} phrases", code="invalid_hotword", param="hotwords"
        )
    return tuple(out)


def build_params(
    *,
    task: str,
    language: str | None,
    prompt: str | None,
    response_format: str,
    temperature: float | None,
    granularities: Sequence[str],
    hotwords: Sequence[str],
    priority: str,
    deadline_ms: int | None,
    received: float,
) -> Params:
    """Validated Params; ``received`` is the monotonic time the request arrived (deadlines count from it)."""
    words = "word" in granularities
    if words and response_format != "verbose_json":
        raise APIError(
            400,
            "timestamp_granularities[]=word needs response_format=verbose_json",
            code="invalid_request",
            param="timestamp_granularities",
        )
    if prompt is not None and len(prompt) > MAX_PROMPT_CHARS:
        raise APIError(400, f"prompt: at most {MAX_PROMPT_CHARS} characters", param="prompt")
    params = Params(
        task=task,
        language=(language or None),
        prompt=prompt or None,
        temperature=temperature,
        word_timestamps=words,
        hotwords=parse_hotwords(hotwords),
        priority=Priority[priority.upper()],
        deadline=None if deadline_ms is None else received + deadline_ms / 1000,
    )
    try:
        params.options()
    except OptionsError as e:
        raise APIError(400, str(e), code="invalid_option") from None
    return params


def check_language(params: Params, tokenizer: Tokenizer) -> None:
    """400 for a language (or a translation) the model cannot do."""
    if params.language is None and params.task == "transcribe":
        return
    try:
        tokenizer.with_options(
            language=params.language,
            task=params.task if tokenizer.is_multilingual else None,
        )
    except ValueError as e:
        raise APIError(400, str(e), code="unsupported_language", param="language") from None
    if params.task == "translate" and not tokenizer.is_multilingual:
        raise APIError(400, "this model is English-only: it cannot translate", code="unsupported_task")


def now() -> float:
    return time.monotonic()
