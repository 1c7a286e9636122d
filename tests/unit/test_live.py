"""Live transcription parts without a server: stable-prefix agreement, realtime input formats, and a session's
partial/final logic over a scripted decoder (what is committed, what stays provisional, what replaces it)."""

from __future__ import annotations

import asyncio
import base64
import json
from types import SimpleNamespace

import numpy as np
import pytest

from voxserve.audio.raw import decode_g711, decode_pcm16
from voxserve.decoding.decode import DecodingResult
from voxserve.live.agreement import StablePrefix
from voxserve.live.formats import ChunkDecoder, FormatError, InputFormat, decode_base64
from voxserve.live.service import LiveOptions, LiveStats
from voxserve.live.session import LiveSession


def test_agreement_commits_what_two_hypotheses_share():
    a = StablePrefix()
    assert a.update("and so my") == ("", "and so my")  # nothing to agree with yet
    assert a.update("and so my fellow") == ("and so my", " fellow")
    assert a.update("and so my fellow americans") == (" fellow", " americans")
    # a hypothesis that contradicts committed words commits nothing; its words past the committed ones stay grey
    assert a.update("and sew my fellow citizens") == ("", " citizens")
    assert a.update("and so my fellow americans ask") == ("", " americans ask")
    assert a.update("and so my fellow americans ask not") == (" americans ask", " not")
    assert a.text == "and so my fellow americans ask"


def test_agreement_deltas_concatenate_to_the_committed_text():
    rng = np.random.default_rng(0)
    words = "ask not what your country can do for you".split()
    a, shown = StablePrefix(), ""
    for n in range(1, len(words) + 1):
        hyp = words[:n] + (["noise"] if rng.random() < 0.5 else [])
        delta, _ = a.update(" ".join(hyp))
        shown += delta
    assert shown == a.text and a.text.split() == words[: len(a.committed)]
    assert len(a.committed) >= len(words) - 2


def test_pcm16_24k_chunks_match_the_whole_signal():
    rng = np.random.default_rng(1)
    pcm = (rng.standard_normal(24000) * 3000).astype("<i2").tobytes()
    dec = ChunkDecoder(InputFormat.of("pcm16", 24000))
    chunks = [dec.decode(pcm[i : i + 960]) for i in range(0, len(pcm), 960)]  # 20 ms chunks
    streamed = np.concatenate(chunks)
    whole = decode_pcm16(pcm, sample_rate=24000)
    assert 15000 <= len(streamed) <= 16000
    np.testing.assert_allclose(streamed, whole[: len(streamed)], atol=1e-4)


@pytest.mark.parametrize("name,law", [("g711_ulaw", "mulaw"), ("g711_alaw", "alaw")])
def test_g711_chunks_match_the_reference_decoder(name, law):
    codes = np.random.default_rng(2).integers(0, 256, 8000, dtype=np.uint8).tobytes()
    dec = ChunkDecoder(InputFormat.of(name))
    streamed = np.concatenate([dec.decode(codes[i : i + 160]) for i in range(0, len(codes), 160)])
    whole = decode_g711(codes, law=law)
    np.testing.assert_allclose(streamed, whole[: len(streamed)], atol=1e-4)
    assert len(streamed) >= 15800


def test_format_errors():
    with pytest.raises(FormatError, match="input_audio_format"):
        InputFormat.of("mp3")
    with pytest.raises(FormatError, match="16000 or 24000"):
        InputFormat.of("pcm16", 8000)
    with pytest.raises(FormatError, match="8000 Hz"):
        InputFormat.of("g711_ulaw", 16000)
    with pytest.raises(FormatError, match="integer"):
        InputFormat.of("pcm16", "16000")
    with pytest.raises(FormatError, match="whole 16-bit samples"):
        ChunkDecoder(InputFormat()).decode(b"\x00\x01\x02")
    with pytest.raises(FormatError, match="base64 string"):
        decode_base64(None, max_bytes=10)
    with pytest.raises(FormatError, match="not valid base64"):
        decode_base64("a b c!", max_bytes=10)
    with pytest.raises(FormatError, match="larger than 10 bytes"):
        decode_base64(base64.b64encode(bytes(100)).decode(), max_bytes=10)
    assert decode_base64(base64.b64encode(b"ok").decode(), max_bytes=10) == b"ok"


class ScriptedService:
    """What a session needs from LiveService, with decodes answered from a script."""

    def __init__(self, texts: list[str]) -> None:
        self.options = LiveOptions(partial_interval_s=0.5, min_partial_s=0.0, max_ahead_s=1e6)
        self.vad_model = None
        self.stats = LiveStats()
        self.window_samples = 16000 * 30
        self.whisper = SimpleNamespace(tokenizer=SimpleNamespace(is_multilingual=False))
        self.texts, self.decoded, self.prefixes, self.streaming, self.keys = list(texts), [], [], [], []

    async def decode(
        self,
        samples,
        *,
        language,
        prompt,
        on_ticket=None,
        partial=False,
        prefix=None,
        streaming=None,
        audio_key=None,
    ):
        self.decoded.append(len(samples))
        self.keys.append(audio_key)
        self.prefixes.append(prefix)
        self.streaming.append(streaming)
        text = self.texts.pop(0)
        if isinstance(text, BaseException):
            raise text
        text, reason = text if isinstance(text, tuple) else (text, "stop")
        if prefix:  # a real decoder is given the prefix and writes only what follows it
            assert text.startswith(prefix), (prefix, text)
            text = text[len(prefix) :].strip()
        return DecodingResult((), text, "en", 0.0, 0.0, 0.0, 1.0, finish_reason=reason)


def _speak(service, chunks: int, yields: int) -> list[dict]:
    """Send ``chunks`` 100 ms chunks of a constant tone to a new session on a fake clock 100 ms apart, letting its
    tasks run ``yields`` times after each; commit, wait for every decode, close. Returns the events it sent."""
    events: list[dict] = []
    now = [0.0]

    async def send(event):
        events.append(event)

    async def run():
        session = LiveSession(service, send, clock=lambda: now[0])
        await session.update({"input_audio_sample_rate": 16000, "turn_detection": None})
        chunk = base64.b64encode(np.full(1600, 1000, "<i2").tobytes()).decode()
        for k in range(chunks):
            now[0] = k * 0.1
            await session.append(chunk)
            for _ in range(yields):  # partial tasks run
                await asyncio.sleep(0)
        await session.commit()
        while session.tasks:
            await asyncio.sleep(0)
        await session.close()

    asyncio.run(run())
    return events


def test_session_partials_then_final_replaces_them():
    partials = [
        "the cat",
        "the cat sat",
        "the cat sat on",
        "the cat sat on",
        "the cat sat on a",
        "the cat sat on a mat",
    ]
    service = ScriptedService([*partials, "the cat sat on the mat."])
    events = _speak(service, chunks=30, yields=2)  # 3 s of audio
    deltas = [e for e in events if e["type"].endswith(".delta")]
    assert [(d["delta"], d["partial"]) for d in deltas] == [
        ("", "the cat"), ("the cat", " sat"), (" sat", " on"), (" on", ""), ("", " a"), (" a", " mat")
    ]  # fmt: skip
    # partials every 0.5 s (the interval), each over the whole item so far, the committed words forced
    assert service.decoded[:6] == [1600 * (1 + 5 * k) for k in range(6)]
    assert service.prefixes == [
        None,
        None,
        "the cat",
        "the cat sat",
        "the cat sat on",
        "the cat sat on",
        None,
    ]
    completed = events[-1]
    assert completed["type"].endswith(".completed") and completed["transcript"] == "the cat sat on the mat."
    assert completed["usage"] == {"type": "duration", "seconds": 3.0}
    types = [e["type"] for e in events]
    assert types.index("input_audio_buffer.committed") + 1 == types.index("conversation.item.created")
    assert service.decoded[-1] == 30 * 1600  # the final decodes the whole item
    assert {d["item_id"] for d in deltas} == {completed["item_id"]}
    # every decode of the item starts at its first sample: all name the item, for the engine's audio cache
    assert service.keys == [completed["item_id"]] * 7
    # every chunk's latency is counted once: by a partial, or by the final
    assert len(service.stats.text_latency) == 30
    # the partials and the final share the item's kept log-mel frames (all start at its first sample)
    assert len({id(m) for m in service.streaming}) == 1 and service.streaming[0] is not None


def test_failed_decodes_are_reported_and_the_session_goes_on():
    from voxserve.engine.engine import EngineError

    service = ScriptedService([EngineError("the engine failed: CUDA error"), RuntimeError("boom"), "hello"])
    events = []

    async def send(event):
        events.append(event)

    async def run():
        session = LiveSession(service, send)
        service.options = LiveOptions(partial_interval_s=100.0, min_partial_s=0.0, max_ahead_s=1e6)
        await session.update({"input_audio_sample_rate": 16000, "turn_detection": None})
        chunk = base64.b64encode(np.full(1600, 1000, "<i2").tobytes()).decode()
        await session.append(chunk)  # its partial fails: an error event
        for _ in range(3):
            await asyncio.sleep(0)
        await session.commit()  # its final fails: a failed event for the item
        while session.tasks:
            await asyncio.sleep(0)
        await session.append(chunk)
        await session.commit()  # the next item is transcribed
        while session.tasks:
            await asyncio.sleep(0)
        await session.close()

    asyncio.run(run())
    kinds = [e["type"] for e in events]
    error = next(e for e in events if e["type"] == "error")
    assert error["error"]["code"] == "engine_error" and "CUDA error" in error["error"]["message"]
    failed = next(e for e in events if e["type"].endswith(".failed"))
    assert failed["error"]["code"] == "server_error" and "boom" in failed["error"]["message"]
    assert kinds[-1].endswith(".completed") and events[-1]["transcript"] == "hello"
    assert events[-1]["item_id"] != failed["item_id"]


def test_agreement_in_unspaced_scripts_commits_characters():
    a = StablePrefix()
    assert a.update("今天天气") == ("", "今天天气")
    assert a.update("今天天气很好") == ("今天天气", "很好")
    assert a.update("今天天气很好啊 OK") == ("很好", "啊 OK")
    assert a.update("今天天气很好啊 OK then") == ("啊 OK", " then")
    assert a.text == "今天天气很好啊 OK"


def test_vad_segments_fit_a_short_model_window():
    from voxserve.live.service import LiveService

    def service(ctx: int) -> LiveService:
        whisper = SimpleNamespace(model=SimpleNamespace(dims=SimpleNamespace(n_audio_ctx=ctx)))
        return LiveService(whisper, None, None)

    assert service(1500).options.vad.max_speech_s == 28.0  # 30 s windows: the default cap
    short = service(250)  # a 5 s window
    assert short.window_samples == 5 * 16000 and short.options.vad.max_speech_s == 4.0


def test_a_partial_cut_by_its_deadline_shows_nothing():
    service = ScriptedService([("the", "deadline"), "the cat", "the cat sat", "the cat sat down"])
    events = _speak(service, chunks=11, yields=3)
    deltas = [(e["delta"], e["partial"]) for e in events if e["type"].endswith(".delta")]
    assert deltas == [("", "the cat"), ("the cat", " sat")]  # nothing from the cut-short first partial
    assert events[-1]["transcript"] == "the cat sat down"


def test_short_windows_pad_to_few_lengths():
    import torch

    from voxserve.live.service import LiveService

    whisper = SimpleNamespace(model=SimpleNamespace(dims=SimpleNamespace(n_audio_ctx=1500, n_mels=80)))
    engine = SimpleNamespace(runner=SimpleNamespace(device=torch.device("cpu")))
    short = LiveService(whisper, engine, None, LiveOptions(short_windows=True))
    full = LiveService(whisper, engine, None, LiveOptions())
    x = np.random.default_rng(0).standard_normal(16000 * 20).astype(np.float32) * 0.1
    frames = {s: short.mel(x[: int(16000 * s)]).shape for s in (0.3, 1.0, 1.5, 5.0, 16.0, 17.0, 20.0)}
    assert frames == {0.3: (80, 100), 1.0: (80, 100), 1.5: (80, 200), 5.0: (80, 800), 16.0: (80, 1600),
                      17.0: (80, 3000), 20.0: (80, 3000)}  # fmt: skip
    assert full.mel(x[:16000]).shape == (80, 3000)
    # the audio's frames are the same whatever the padding after them (up to the frames next to its end)
    torch.testing.assert_close(short.mel(x[: 16000 * 3])[:, :280], full.mel(x[: 16000 * 3])[:, :280])


def test_window_mel_fills_silence_exactly():
    """Only the audio is transformed; the silence after it is filled in with the very values the whole
    zero-padded window's log-mel has."""
    import torch

    from voxserve.audio.features import log_mel_spectrogram
    from voxserve.live.service import LiveService

    whisper = SimpleNamespace(model=SimpleNamespace(dims=SimpleNamespace(n_audio_ctx=1500, n_mels=80)))
    engine = SimpleNamespace(runner=SimpleNamespace(device=torch.device("cpu")))
    full = LiveService(whisper, engine, None, LiveOptions())
    x = np.random.default_rng(0).standard_normal(16000 * 30).astype(np.float32) * 0.1
    for seconds in (0.01, 0.7, 3.3, 29.99, 30.0):
        y = x[: int(16000 * seconds)]
        whole = log_mel_spectrogram(np.pad(y, (0, 480000 - len(y))), 80)[:, :3000]
        torch.testing.assert_close(full.mel(y), whole, atol=1e-5, rtol=0)
    silent = full.mel(np.zeros(8000, np.float32))
    torch.testing.assert_close(silent, log_mel_spectrogram(np.zeros(480000, np.float32), 80)[:, :3000])


@pytest.mark.parametrize("short_windows", [True, False])
def test_window_mel_from_kept_frames_equals_the_whole_transform(short_windows):
    """An utterance's partials and final made from its kept log-mel frames: the same windows as made from
    scratch, also for a final that ends before the last partial did and past the model's window."""
    import torch

    from voxserve.audio.streaming_mel import StreamingLogMel
    from voxserve.live.service import LiveService

    whisper = SimpleNamespace(model=SimpleNamespace(dims=SimpleNamespace(n_audio_ctx=1500, n_mels=80)))
    engine = SimpleNamespace(runner=SimpleNamespace(device=torch.device("cpu")))
    service = LiveService(whisper, engine, None, LiveOptions(short_windows=short_windows))
    x = np.random.default_rng(1).standard_normal(16000 * 32).astype(np.float32) * 0.1
    kept = StreamingLogMel()
    for seconds in (0.3, 0.5, 0.7, 1.0, 1.9, 2.1, 4.3, 4.1, 16.0, 29.98, 30.0, 31.0):
        y = x[: int(16000 * seconds)]
        torch.testing.assert_close(service.mel(y, kept), service.mel(y), atol=1e-5, rtol=0)


@pytest.mark.parametrize("short_windows", [True, False])
def test_audio_windows_make_the_hosts_window_mels(short_windows):
    """With mels="engine" (the default) a decode sends its window's audio: made into a log-mel by the engine (one batch per
    window length, engine/mels.py), it equals the host's window mel, also past the model's window."""
    import torch

    from voxserve.engine.mels import window_mels
    from voxserve.engine.types import AudioWindow
    from voxserve.live.service import LiveService

    whisper = SimpleNamespace(model=SimpleNamespace(dims=SimpleNamespace(n_audio_ctx=1500, n_mels=80)))
    engine = SimpleNamespace(runner=SimpleNamespace(device=torch.device("cpu")))
    host = LiveService(whisper, engine, None, LiveOptions(short_windows=short_windows, mels="host"))
    audio = LiveService(whisper, engine, None, LiveOptions(short_windows=short_windows))
    x = np.random.default_rng(2).standard_normal(16000 * 32).astype(np.float32) * 0.1
    clips = [x[: int(16000 * s)] for s in (0.01, 0.3, 0.9, 1.0, 1.9, 2.1, 4.3, 4.1, 16.0, 29.99, 31.0)]
    windows = [audio.audio_window(y) for y in clips]
    assert all(isinstance(w, AudioWindow) and len(w.samples) <= 480000 for w in windows)
    made = window_mels(windows, 80, torch.device("cpu"))
    for y, w, mel in zip(clips, windows, made, strict=True):
        assert mel.shape == (80, w.frames)
        torch.testing.assert_close(mel, host.mel(y), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="mels must be"):
        LiveOptions(mels="gpu")


def _handle(service, messages: list[dict]) -> tuple[list[dict], LiveSession]:
    """Feed client events to a new session, one after another; returns the events it sent and the session."""
    events: list[dict] = []

    async def send(event):
        events.append(event)

    async def run():
        session = LiveSession(service, send)
        for message in messages:
            await session.handle(message)
        return session

    return events, asyncio.run(run())


def test_ga_shaped_session_update():
    service = ScriptedService([])
    service.vad_model = None
    events, _ = _handle(service, [
        {"type": "session.update", "session": {
            "type": "transcription",
            "audio": {"input": {"format": {"type": "audio/pcmu"}, "turn_detection": None,
                                "transcription": {"model": "whisper-1", "language": "en", "prompt": "names"}}},
        }},
        {"type": "session.update", "session": {"audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}}},
        {"type": "session.update", "session": {"audio": {"input": {"format": {"type": "audio/opus"}}}}},
    ])  # fmt: skip
    first, second, error = events
    assert first["type"] == "session.updated"
    assert (
        first["session"]["input_audio_format"] == "g711_ulaw" and first["session"]["turn_detection"] is None
    )
    assert first["session"]["input_audio_transcription"]["prompt"] == "names"
    assert (second["session"]["input_audio_format"], second["session"]["input_audio_sample_rate"]) == (
        "pcm16",
        16000,
    )
    assert error["type"] == "error" and "audio/opus" in error["error"]["message"]


def test_turn_detection_numbers_beyond_float_range_get_an_error_event():
    # JSON's 1e400 parses as inf; int(inf) raises OverflowError, which used to end the connection (1011).
    service = ScriptedService([])
    events = []

    async def send(event):
        events.append(event)

    async def run():
        session = LiveSession(service, send)
        service.vad_model = object()  # the server has a VAD, so the options are parsed
        for field in ("silence_duration_ms", "prefix_padding_ms"):
            await session.handle(
                {"type": "transcription_session.update", "session": {"turn_detection": {field: 1e400}}}
            )

    asyncio.run(run())
    assert [e["error"]["code"] for e in events] == ["invalid_turn_detection"] * 2


def test_an_overlong_prompt_is_refused():
    t = {"prompt": "names " * 1000}
    events, session = _handle(
        ScriptedService([]),
        [{"type": "transcription_session.update", "session": {"input_audio_transcription": t}}],
    )
    assert session.prompt is None
    assert [e["error"]["code"] for e in events] == ["invalid_session"]


def test_error_events_do_not_echo_huge_client_values():
    t = {"language": "y" * 100_000}
    events, _ = _handle(
        ScriptedService([]),
        [
            {"type": "x" * 100_000},
            {"type": "transcription_session.update", "session": {"input_audio_transcription": t}},
        ],
    )
    assert [e["error"]["code"] for e in events] == ["unknown_event_type", "invalid_language"]
    assert all(len(e["error"]["message"]) <= 300 for e in events)


def _fresh_spec(service, language, prompt, prefix, samples):
    """What a partial's row spec was when each partial built its own WindowDecoder with the prefix."""
    import math
    from dataclasses import replace

    from voxserve.decoding.decode import WindowDecoder
    from voxserve.decoding.options import DecodingOptions

    tok, o = service.whisper.tokenizer, service.options
    fixed = o.fixed_tokens_per_second is not None

    def decoder(prefix):
        options = DecodingOptions(language=language, prompt=prompt or None, prefix=prefix or None,
                                  without_timestamps=True, suppress_tokens=(-1, tok.eot) if fixed else (-1,))  # fmt: skip
        return WindowDecoder(service.whisper.model, tok, options)

    spec, seconds = decoder(prefix).row_spec(), min(samples, service.window_samples) / 16000
    if fixed:
        forced = len(spec.initial_tokens) - len(decoder(None).initial_tokens)
        return replace(spec, sample_len=max(1, round(o.fixed_tokens_per_second * seconds) - forced))
    return replace(spec, sample_len=min(spec.sample_len, math.ceil(o.max_tokens_per_second * seconds) + 10))


@pytest.mark.parametrize("fixed", [None, 3.0])
def test_prefix_partials_reuse_the_cached_decoder_with_the_same_spec(tokenizer, tiny_dims, fixed):
    """A partial's row spec, from the (language, prompt) decoder with the prefix's tokens appended, is exactly the
    spec of a WindowDecoder built with that prefix; prefixes too long for the context are refused alike."""
    from voxserve.decoding.options import OptionsError
    from voxserve.live.service import LiveService

    whisper = SimpleNamespace(model=SimpleNamespace(dims=tiny_dims), tokenizer=tokenizer)
    service = LiveService(whisper, None, None, LiveOptions(fixed_tokens_per_second=fixed))
    cases = [
        ("en", None, "the cat sat", 16000),
        ("en", None, None, 16000 * 3),  # a final: no prefix
        (
            None,
            "Names: Alice Nguyen, Bob Okafor.",
            "  so Alice said ",
            16000 * 7,
        ),  # detected language, a prompt
        ("de", "Glossar", "Guten Morgen, wie geht's?", 16000 * 40),  # past the window
        ("en", None, " ", 16000),  # blank: forced as a space, as WindowDecoder does
        ("en", "context " * 300, "the cat sat", 16000 * 2),  # the prompt keeps its last 223 tokens
    ]
    for language, prompt, prefix, samples in cases:
        decoder, spec = service.request_spec(language, prompt, prefix, samples)
        assert spec == _fresh_spec(service, language, prompt, prefix, samples), (language, prompt, prefix)
        assert decoder is service.window_decoder(language, prompt)  # cached, not rebuilt per partial
    assert len(service._decoders) == 4
    long = "word " * 300
    with pytest.raises(OptionsError, match="no room"):
        _fresh_spec(service, "en", "context " * 300, long, 16000)
    with pytest.raises(OptionsError, match="no room"):
        service.request_spec("en", "context " * 300, long, 16000)


def test_an_event_that_fails_to_serialise_is_logged_and_the_session_goes_on(caplog):
    sent: list[str] = []

    async def send(event):  # as the WebSocket transport does
        sent.append(json.dumps(event))

    async def run():
        session = LiveSession(ScriptedService([]), send)
        await session.emit("probe", value=np.int64(3))  # numpy ints do not serialise
        await session.emit("probe", value=3)
        return session

    with caplog.at_level("ERROR", logger="voxserve.live"):
        session = asyncio.run(run())
    assert [json.loads(text)["value"] for text in sent] == [3]
    assert not session.closed
    assert any("probe event could not be serialised" in r.getMessage() for r in caplog.records)


def test_a_send_to_a_departed_client_is_quiet(caplog):
    async def send(event):
        raise RuntimeError("websocket closed")

    async def run():
        session = LiveSession(ScriptedService([]), send)
        await session.emit("probe")

    with caplog.at_level("ERROR", logger="voxserve.live"):
        asyncio.run(run())
    assert not caplog.records
