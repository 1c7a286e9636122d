"""Temperature fallback: which results are retried, and that decoding climbs the temperature ladder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import TINY
from voxserve.audio.features import log_mel_spectrogram, pad_or_trim
from voxserve.decoding.decode import DecodingResult
from voxserve.decoding.fallback import decode_with_fallback, needs_fallback
from voxserve.decoding.options import DecodingOptions, OptionsError, TranscribeOptions
from voxserve.model.load import init_random
from voxserve.tokenizer import Tokenizer


def result(*, ratio: float = 1.5, logprob: float = -0.3, no_speech: float = 0.1) -> DecodingResult:
    return DecodingResult(
        tokens=(1, 2),
        text="x",
        language="en",
        avg_logprob=logprob,
        no_speech_prob=no_speech,
        temperature=0.0,
        compression_ratio=ratio,
    )


@pytest.mark.parametrize(
    ("kwargs", "retry"),
    [
        ({}, False),
        ({"ratio": 3.0}, True),  # repetition loop
        ({"logprob": -1.5}, True),  # unsure
        ({"logprob": -1.5, "no_speech": 0.9}, False),  # silence: retrying cannot help
        ({"ratio": 3.0, "logprob": -1.5, "no_speech": 0.9}, False),
        ({"ratio": 3.0, "no_speech": 0.9}, True),  # confident text is not silence
    ],
)
def test_needs_fallback(kwargs, retry) -> None:
    assert needs_fallback(result(**kwargs), TranscribeOptions()) is retry


def test_thresholds_can_be_disabled() -> None:
    opts = TranscribeOptions(compression_ratio_threshold=None, logprob_threshold=None)
    assert not needs_fallback(result(ratio=9.0, logprob=-9.0), opts)


@pytest.fixture(scope="module")
def setup(multilingual_tiktoken):
    model = init_random(TINY, seed=1)
    tok = Tokenizer.from_tiktoken(multilingual_tiktoken).with_options(language="en", task="transcribe")
    noise = np.random.default_rng(1).standard_normal(16000 * 5).astype(np.float32) * 0.1
    return model, tok, pad_or_trim(log_mel_spectrogram(noise, 80))


def test_failing_windows_climb_to_the_last_temperature(setup) -> None:
    model, tok, mel = setup
    # Random weights are never confident (avg log-prob about -10): every temperature fails, the last one stays.
    options = TranscribeOptions(temperatures=(0.0, 0.5, 1.0), decoding=DecodingOptions(sample_len=8))
    res, features = decode_with_fallback(
        model,
        tok,
        mel,
        options,
        options.decoding.with_changes(language="en"),
        (),
        generator=torch.manual_seed(0),
    )
    assert res.avg_logprob < -1.0
    assert res.temperature == 1.0
    assert features.shape == (1, 1500, TINY.n_audio_state)


def test_passing_window_stops_at_the_first_temperature(setup) -> None:
    model, tok, mel = setup
    options = TranscribeOptions(
        temperatures=(0.0, 0.5), logprob_threshold=None, decoding=DecodingOptions(sample_len=8)
    )
    res, _ = decode_with_fallback(model, tok, mel, options, options.decoding.with_changes(language="en"), ())
    assert res.temperature == 0.0


def test_sampling_is_reproducible_with_a_generator(setup) -> None:
    model, tok, mel = setup
    options = TranscribeOptions(temperatures=(1.0,), decoding=DecodingOptions(sample_len=10))
    decoding = options.decoding.with_changes(language="en")
    a = decode_with_fallback(model, tok, mel, options, decoding, (), generator=torch.manual_seed(3))[0]
    b = decode_with_fallback(model, tok, mel, options, decoding, (), generator=torch.manual_seed(3))[0]
    c = decode_with_fallback(model, tok, mel, options, decoding, (), generator=torch.manual_seed(4))[0]
    assert a.tokens == b.tokens
    assert a.tokens != c.tokens


@pytest.mark.parametrize(
    "kwargs",
    [
        {"temperatures": ()},
        {"temperatures": (0.0, 7.0)},
        {"clip_timestamps": (-1.0,)},
        {"decoding": DecodingOptions(prompt="hi")},
        {"best_of": 0},
    ],
)
def test_invalid_transcribe_options(kwargs) -> None:
    with pytest.raises(OptionsError):
        TranscribeOptions(**kwargs)
