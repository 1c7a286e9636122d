"""Temperature fallback: decode a window again, hotter, when the output looks like a failure.

A window's text fails when gzip compresses it too well (a repetition loop) or its average log-probability is
too low; a window that is probably silence (high <|nospeech|> probability with low confidence) is accepted as is,
since retrying cannot find speech that is not there.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..model.whisper import Whisper
from ..tokenizer import Tokenizer
from .decode import DecodingResult, WindowDecoder
from .options import DecodingOptions, TranscribeOptions, at_temperature


def needs_fallback(result: DecodingResult, options: TranscribeOptions) -> bool:
    failed = False
    if options.compression_ratio_threshold is not None:
        failed |= result.compression_ratio > options.compression_ratio_threshold
    low_logprob = options.logprob_threshold is not None and result.avg_logprob < options.logprob_threshold
    failed |= low_logprob
    if options.no_speech_threshold is not None and low_logprob:
        if result.no_speech_prob > options.no_speech_threshold:
            return False  # silence: a hotter decode will not find words in it
    return failed


def decode_with_fallback(
    model: Whisper,
    tokenizer: Tokenizer,
    mel: Tensor,
    options: TranscribeOptions,
    decoding: DecodingOptions,
    prompt: tuple[int, ...],
    *,
    generator: torch.Generator | None = None,
) -> tuple[DecodingResult, Tensor]:
    """Decode one window mel [n_mels, 3000] at each temperature of ``options.temperatures`` until one passes.

    ``decoding`` carries the language (fixed by now) and the user's search options; ``prompt`` is the previous
    text's tokens. Returns the accepted (or last) result and the window's encoder output [1, S, C], which word
    alignment reuses.
    """
    decoding = decoding.with_changes(prompt=prompt or None)
    features: Tensor | None = None
    result: DecodingResult | None = None
    for temperature in options.temperatures:
        decoder = WindowDecoder(model, tokenizer, at_temperature(decoding, temperature, options.best_of))
        if features is None:
            features = decoder.encode(mel)
        result = decoder.decode_features(features, generator)[0]
        if not needs_fallback(result, options):
            break
    assert result is not None and features is not None  # temperatures is never empty (validated)
    return result, features
