"""Long-form transcription equals openai-whisper's ``transcribe``: segments, text, timestamps and word timings
on a minute of real speech made by joining the shared Hi-Fi TTS clips."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import AUDIO, TINY
from tests.parity.conftest import to_openai
from tests.support import decisive_model, read_wav
from voxserve.decoding.options import DecodingOptions, TranscribeOptions
from voxserve.transcribe.longform import transcribe_audio

whisper = pytest.importorskip("whisper")


@pytest.fixture(scope="module")
def minute_of_speech() -> np.ndarray:
    files = sorted((AUDIO / "hifitts-6097" / "audio").glob("*.wav"))[:25]
    audio = np.concatenate([read_wav(f) for f in files])
    assert len(audio) >= 60 * 16000
    return audio


@pytest.fixture(scope="module")
def pair(request, tokenizer, tmp_path_factory):
    model = decisive_model(TINY, tokenizer, std=request.param, eot_boost=2.0)
    return model, to_openai(model, tmp_path_factory.mktemp("ref"))


# Weight scale x language x word timestamps, as a pairwise covering (every pair of factor values occurs once) in
# four runs instead of eight: each run is a minute of openai-whisper's Python decode loop, the suite's largest
# cost on CI's two cores, and no code path depends on all three factors together.
LONGFORM_CASES = [
    pytest.param(0.1, "en", True, id="std0.1-words-en"),
    pytest.param(0.1, None, False, id="std0.1-segments-detect"),
    pytest.param(0.2, "en", False, id="std0.2-segments-en"),
    pytest.param(0.2, None, True, id="std0.2-words-detect"),
]


def reference_segments(result: dict) -> list[dict]:
    # openai-whisper keeps instantaneous and empty segments (blanked); voxserve leaves them out.
    return [s for s in result["segments"] if s["text"].strip() and s["start"] != s["end"]]


@pytest.mark.slow
@pytest.mark.parametrize(("pair", "language", "word_timestamps"), LONGFORM_CASES, indirect=["pair"])
def test_longform_matches_openai(pair, tokenizer, minute_of_speech, language, word_timestamps) -> None:
    model, ref_model = pair
    options = TranscribeOptions(
        decoding=DecodingOptions(language=language), temperatures=(0.0,), word_timestamps=word_timestamps
    )
    segments, info = transcribe_audio(model, tokenizer, minute_of_speech, options)
    segments = list(segments)
    ref = whisper.transcribe(
        ref_model,
        minute_of_speech,
        temperature=0.0,
        fp16=False,
        language=language,
        word_timestamps=word_timestamps,
    )
    expected = reference_segments(ref)
    assert info.language == ref["language"]
    assert info.duration == pytest.approx(len(minute_of_speech) / 16000, abs=0.01)
    assert len(segments) >= 5, "the fixture should split a minute into several segments"
    assert [s.text for s in segments] == [s["text"] for s in expected]
    assert [list(s.tokens) for s in segments] == [s["tokens"] for s in expected]
    assert [s.id for s in segments] == list(range(len(segments)))
    for s, r in zip(segments, expected, strict=True):
        assert s.start == pytest.approx(r["start"], abs=1e-6)
        assert s.end == pytest.approx(r["end"], abs=1e-6)
        assert s.seek == r["seek"]
        assert s.avg_logprob == pytest.approx(r["avg_logprob"], abs=1e-4)
        if word_timestamps:
            assert [w.word for w in s.words] == [w["word"] for w in r["words"]]
            for w, rw in zip(s.words, r["words"], strict=True):
                assert abs(w.start - rw["start"]) <= 0.02 and abs(w.end - rw["end"]) <= 0.02
                assert w.probability == pytest.approx(rw["probability"], abs=1e-4)
        else:
            assert s.words is None


@pytest.mark.parametrize("pair", [0.1], ids=["std0.1"], indirect=True)  # std 0.2 gives too few segments
def test_initial_prompt_and_clips_match_openai(pair, tokenizer, minute_of_speech) -> None:
    model, ref_model = pair
    clips = (5.0, 25.0, 40.0)  # an odd count: the last clip runs to the end
    options = TranscribeOptions(
        decoding=DecodingOptions(language="en"),
        temperatures=(0.0,),
        initial_prompt="Leadbeater on the astral plane.",
        clip_timestamps=clips,
    )
    segments = list(transcribe_audio(model, tokenizer, minute_of_speech, options)[0])
    ref = whisper.transcribe(
        ref_model,
        minute_of_speech,
        temperature=0.0,
        fp16=False,
        language="en",
        initial_prompt="Leadbeater on the astral plane.",
        clip_timestamps=list(clips),
    )
    expected = reference_segments(ref)
    assert len(segments) >= 3, "the clips should hold several segments"
    assert [(s.text, round(s.start, 6), round(s.end, 6)) for s in segments] == [
        (r["text"], round(r["start"], 6), round(r["end"], 6)) for r in expected
    ]
    assert all(s.start >= 5.0 - 1e-6 for s in segments)
