"""Windows shorter than 30 s in the batching engine (live streams encode only the audio they have): mixed
lengths admitted together match the reference decoder on each window, and bad shapes are refused at submit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import AUDIO, TINY
from tests.support import decisive_model, read_wav, window_log_mel
from voxserve.audio.features import log_mel_spectrogram
from voxserve.decoding.batched import BatchDecoder, make_engine
from voxserve.decoding.decode import WindowDecoder
from voxserve.decoding.options import DecodingOptions
from voxserve.engine.types import AudioWindow, EngineConfig, Priority, WindowRequest


@pytest.fixture(scope="module")
def model(tokenizer):
    return decisive_model(TINY, tokenizer, std=0.2, eot_boost=2.0)


def _short_mels() -> list[torch.Tensor]:
    speech = read_wav(AUDIO / "samples" / "jfk.wav")
    mels = []
    for seconds in (1, 2.5, 2.5, 4, 7):  # two of the same length share one encoder batch
        mel = log_mel_spectrogram(speech[: int(16000 * seconds)], 80)
        mels.append(mel[:, : mel.shape[-1] // 2 * 2])
    return mels


@pytest.mark.parametrize("packed", [False, True], ids=["per-length", "packed"])
@pytest.mark.parametrize("language", ["en", None], ids=["en", "detected"])
def test_mixed_lengths_match_the_reference(model, tokenizer, packed, language):
    """Encoded one batch per window length or in one packed pass (engine/packed.py), with languages detected
    per window too."""
    torch.set_num_threads(1)
    opts = DecodingOptions(language=language, without_timestamps=True, sample_len=12)
    mels = _short_mels()
    expected = [WindowDecoder(model, tokenizer, opts).decode(m[None])[0].tokens for m in mels]
    config = EngineConfig(max_slots=4, max_admit=4, packed_encoder=packed)
    with make_engine(model, tokenizer, config) as engine:
        assert engine.runner.packed_encoder is packed
        batch = BatchDecoder(engine, model, tokenizer)
        pending = [batch.submit(m, opts, priority=Priority.REALTIME) for m in mels]
        got = [d.result_from(t.result(timeout=60)).tokens for d, t in pending]
    assert got == expected
    assert any(len(t) > 0 for t in got)


@pytest.mark.parametrize("packed", [False, True], ids=["per-length", "packed"])
def test_audio_windows_decode_as_their_log_mels(model, tokenizer, packed):
    """Windows sent as audio (the engine makes their log-mels, batched per length, engine/mels.py) decode to the
    very tokens of the same windows sent as the host's log-mels, mixed with mel windows in one admission."""
    torch.set_num_threads(1)
    opts = DecodingOptions(language="en", without_timestamps=True, sample_len=12)
    speech = read_wav(AUDIO / "samples" / "jfk.wav")
    clips = [speech[: int(16000 * s)] for s in (0.6, 1.0, 2.5, 2.7, 7.0)]
    frames = [100, 100, 400, 400, 800]
    mels = [window_log_mel(c, f) for c, f in zip(clips, frames, strict=True)]
    config = EngineConfig(max_slots=8, max_admit=8, packed_encoder=packed)
    with make_engine(model, tokenizer, config) as engine:
        batch = BatchDecoder(engine, model, tokenizer)
        expected = [
            d.result_from(t.result(timeout=60)).tokens for d, t in [batch.submit(m, opts) for m in mels]
        ]
        windows = [
            AudioWindow(c, f) if i % 2 == 0 else m
            for i, (c, f, m) in enumerate(zip(clips, frames, mels, strict=True))
        ]
        got = [
            d.result_from(t.result(timeout=60)).tokens for d, t in [batch.submit(w, opts) for w in windows]
        ]
    assert got == expected
    assert any(len(t) > 0 for t in got)


def test_bad_window_shapes_are_refused_and_the_engine_lives_on(model, tokenizer):
    opts = DecodingOptions(language="en", without_timestamps=True, sample_len=4)
    spec = WindowDecoder(model, tokenizer, opts).row_spec()
    with make_engine(model, tokenizer, EngineConfig(max_slots=2)) as engine:
        for mel in (torch.zeros(80, 101), torch.zeros(80, 3002), torch.zeros(64, 200), torch.zeros(80)):
            with pytest.raises(ValueError, match="a window must be"):
                engine.submit(WindowRequest(mel=mel, spec=spec))
        x = np.zeros(16000, np.float32)
        for window in (
            AudioWindow(x, 99),  # 101 frames hold 16,000 samples, 99 do not
            AudioWindow(x, 101),  # odd
            AudioWindow(np.zeros(480160, np.float32), 3002),  # past the model's window
            AudioWindow(x.astype(np.float64), 100),
            AudioWindow(x[None], 100),
            AudioWindow(x, 100.0),  # a float frame count would fail inside the engine's worker
        ):
            with pytest.raises(ValueError, match="a window must be|1-D float32|must be an integer"):
                engine.submit(WindowRequest(mel=window, spec=spec))
        out = engine.submit(WindowRequest(mel=_short_mels()[0], spec=spec)).result(timeout=60)
        assert out.finish_reason in ("stop", "length")


def test_token_events_can_be_switched_off(model, tokenizer):
    import asyncio

    from voxserve.engine.types import TokenEvent

    opts = DecodingOptions(language="en", without_timestamps=True, sample_len=6)
    spec = WindowDecoder(model, tokenizer, opts).row_spec()
    mel = _short_mels()[1]

    async def run(token_events: bool) -> list:
        ticket = engine.submit(WindowRequest(mel=mel, spec=spec))
        ticket.token_events = token_events
        return [item async for item in ticket]

    with make_engine(model, tokenizer, EngineConfig(max_slots=2)) as engine:
        with_events = asyncio.run(run(True))
        without = asyncio.run(run(False))
    assert without[-1] == with_events[-1] and len(without[-1].tokens) > 1
    # the switch is set after submit, so the admission's first token may still come as an event
    assert len([e for e in without if isinstance(e, TokenEvent)]) <= 1
    assert len([e for e in with_events if isinstance(e, TokenEvent)]) == len(with_events[-1].tokens)


def test_warm_up_prepares_every_window_length_a_live_service_encodes(model, tokenizer):
    """The engine warm-up covers the full window and each short window the live service's mels can have, so
    on CUDA no encoder graph is captured while live sessions run; on the CPU it runs each length once."""
    from voxserve.api import WhisperModel
    from voxserve.live.service import LiveOptions, LiveService
    from voxserve.model.load import CheckpointInfo

    whisper = WhisperModel(model, tokenizer, CheckpointInfo("tiny", "random", None), is_random=True)
    options = LiveOptions(short_windows=True)
    frames = options.short_window_frames(3000)
    assert frames == (100, 200, 400, 800, 1600)
    assert LiveOptions().short_window_frames(3000) == ()
    with make_engine(model, tokenizer, EngineConfig(max_slots=2, short_window_frames=frames)) as engine:
        ran = engine.runner.warmup()
        service = LiveService(whisper, engine, None, options)
        seen = {
            service.mel(np.zeros(n, dtype=np.float32)).shape[-1] for n in (800, 16000, 16001, 60000, 480000)
        }
    assert ran == [("step", 1), ("sample", 1)] + [(f"encoder {f}", 1) for f in (*frames, 3000)]
    assert seen == {100, 200, 400, 3000}


@pytest.mark.parametrize("where", ["launch_admission", "finish_admission"])
def test_a_failure_during_admission_reaches_the_requests_being_admitted(model, tokenizer, where):
    """Requests taken off the queue but not yet decoding learn of an engine failure in their admission, as it is
    launched or when its first tokens are read (they waited forever: neither queued nor active when the engine
    failed them all)."""
    from voxserve.engine.engine import EngineError

    opts = DecodingOptions(language="en", without_timestamps=True, sample_len=4)
    spec = WindowDecoder(model, tokenizer, opts).row_spec()
    with make_engine(model, tokenizer, EngineConfig(max_slots=2)) as engine:

        def fail(*args, **kwargs):
            raise RuntimeError("injected admission fault")

        setattr(engine.runner, where, fail)
        ticket = engine.submit(WindowRequest(mel=_short_mels()[0], spec=spec))
        with pytest.raises(EngineError, match="injected admission fault"):
            ticket.result(timeout=60)


def test_a_live_utterances_final_decode_frees_its_kept_audio(model, tokenizer):
    """Through the live service and the engine (an audio cache as on CUDA, here on the CPU): an utterance's
    partials keep its audio under its key, its final decode drops it (AudioWindow.last)."""
    import asyncio

    from voxserve.api import WhisperModel
    from voxserve.engine.audio_cache import AudioCache
    from voxserve.live.service import LiveOptions, LiveService
    from voxserve.model.load import CheckpointInfo

    whisper = WhisperModel(model, tokenizer, CheckpointInfo("tiny", "random", None), is_random=True)
    options = LiveOptions(short_windows=True)
    speech = read_wav(AUDIO / "samples" / "jfk.wav")
    config = EngineConfig(max_slots=2, short_window_frames=options.short_window_frames(3000))
    with make_engine(model, tokenizer, config) as engine:
        cache = engine.runner.audio_cache = AudioCache(torch.device("cpu"))
        service = LiveService(whisper, engine, None, options)

        async def utterance() -> list[int]:
            kept = []
            for n, partial in ((16000, True), (32000, True), (40000, False)):
                await service.decode(speech[:n], language="en", prompt=None, partial=partial, audio_key="u1")
                kept.append(len(cache))
            return kept

        assert asyncio.run(utterance()) == [1, 1, 0]
    assert cache.sent == 40000 and cache.bytes == 0
