"""The realtime transcription WebSocket on a tiny random model: OpenAI's event flow (manual commit and server
VAD), the final transcript equal to the offline decode of the same audio, telephony formats, and robustness
(garbage, wrong formats, too-fast audio, idle sessions, caps, disconnects) without a server crash."""

from __future__ import annotations

import base64
import json
import time

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("onnxruntime")

from fastapi import FastAPI  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from starlette.websockets import WebSocketDisconnect  # noqa: E402

from tests.conftest import AUDIO, SHARED, TINY  # noqa: E402
from tests.server.conftest import append, configure, inject_step_fault, pcm16, receive_until  # noqa: E402
from tests.support import decisive_model, read_wav  # noqa: E402
from voxserve.api import WhisperModel  # noqa: E402
from voxserve.audio.vad import SileroVAD  # noqa: E402
from voxserve.decoding.batched import make_engine  # noqa: E402
from voxserve.engine.types import EngineConfig  # noqa: E402
from voxserve.live.service import LiveOptions, LiveService  # noqa: E402
from voxserve.model.load import CheckpointInfo  # noqa: E402
from voxserve.server.realtime import realtime_router  # noqa: E402

SR = 16000
URL = "/v1/realtime?intent=transcription"


@pytest.fixture(scope="module")
def whisper(tokenizer):
    torch.set_num_threads(1)
    model = decisive_model(TINY, tokenizer, std=0.2, eot_boost=2.0)
    return WhisperModel(model, tokenizer, CheckpointInfo("tiny random", "random", None), is_random=True)


@pytest.fixture(scope="module")
def engine(whisper):
    eng = make_engine(whisper.model, whisper.tokenizer, EngineConfig(max_slots=4))
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def vad_model():
    return SileroVAD(SHARED / "vad" / "silero_vad.onnx")


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return read_wav(AUDIO / "samples" / "jfk.wav")


def client_for(whisper, engine, vad_model, **options) -> tuple[TestClient, LiveService]:
    keys = options.pop("keys", None)
    opts = {"max_ahead_s": 1000.0, "partial_interval_s": 0.2, **options}
    service = LiveService(whisper, engine, vad_model, LiveOptions(**opts))
    app = FastAPI()
    app.include_router(realtime_router(service, api_keys=keys))
    return TestClient(app), service


def offline_text(service: LiveService, x: np.ndarray) -> str:
    """The same audio through the reference decoder (what the final transcript must equal)."""
    mel = service.mel(x)
    return service.window_decoder(None, None).decode(mel[None])[0].text


@pytest.mark.parametrize("mels", ["host", "engine"])
def test_manual_commit_gives_the_offline_transcript(whisper, engine, vad_model, speech, mels):
    """Log-mels made on the host or by the engine from the window's audio (LiveOptions.mels)."""
    client, service = client_for(whisper, engine, vad_model, mels=mels)
    x = speech[: 3 * SR]
    with client, client.websocket_connect(URL) as ws:
        session = configure(
            ws, input_audio_format="pcm16", input_audio_sample_rate=16000, turn_detection=None
        )
        assert session["turn_detection"] is None and session["input_audio_sample_rate"] == 16000
        for i in range(0, len(x), 1600):
            append(ws, x[i : i + 1600])
        ws.send_json({"type": "input_audio_buffer.commit"})
        events = receive_until(ws, "conversation.item.input_audio_transcription.completed")
    committed = next(e for e in events if e["type"] == "input_audio_buffer.committed")
    completed = events[-1]
    assert completed["item_id"] == committed["item_id"] and committed["previous_item_id"] is None
    quantised = np.round(np.clip(x, -1, 1) * 32767).astype(np.int16).astype(np.float32) / 32768
    assert completed["transcript"] == offline_text(service, quantised)
    assert completed["transcript"]  # the decisive random model writes something
    assert service.open_streams == 0


def test_server_vad_items_and_partials(whisper, engine, vad_model, speech):
    client, service = client_for(whisper, engine, vad_model, partial_interval_s=0.05)
    silence = np.zeros(SR, np.float32)
    x = np.concatenate(
        [silence, speech[: 4 * SR], silence, silence, speech[5 * SR : 8 * SR], silence, silence]
    )
    with client, client.websocket_connect(URL) as ws:
        configure(ws, input_audio_sample_rate=16000)
        for i in range(0, len(x), 1600):
            append(ws, x[i : i + 1600])
            time.sleep(0.02)  # 5x real time: partials come back between chunks
        # events are handled in order: "cleared" comes after every VAD event of the audio before it
        ws.send_json({"type": "input_audio_buffer.clear"})
        events = receive_until(ws, "input_audio_buffer.cleared")
        started = [e for e in events if e["type"] == "input_audio_buffer.speech_started"]
        while sum(e["type"].endswith(".completed") for e in events) < len(started):
            events += receive_until(ws, "conversation.item.input_audio_transcription.completed")
    types = [e["type"] for e in events]
    stopped = [e for e in events if e["type"] == "input_audio_buffer.speech_stopped"]
    assert len(started) == len(stopped) >= 2
    # speech 1-5 s and 7-10 s, silence around: the 2 s pause ends an item and the next starts after it
    assert 700 <= started[0]["audio_start_ms"] <= 1600
    assert any(4500 <= e["audio_end_ms"] <= 6000 for e in stopped)
    assert any(6500 <= e["audio_start_ms"] <= 7500 for e in started)
    assert [s["item_id"] for s in started] == [s["item_id"] for s in stopped]
    deltas = [e for e in events if e["type"].endswith(".delta")]
    assert deltas, f"no partials: {types}"
    for d in deltas:  # a partial comes after its item started and before it completed
        i = events.index(d)
        assert any(e["type"].endswith("speech_started") and e["item_id"] == d["item_id"] for e in events[:i])
        assert not any(e["type"].endswith(".completed") and e["item_id"] == d["item_id"] for e in events[:i])
    completed = [e for e in events if e["type"].endswith(".completed")]
    assert {c["item_id"] for c in completed} == {s["item_id"] for s in started}
    for d in deltas:
        assert isinstance(d["delta"], str) and isinstance(d["partial"], str)
    assert service.stats.partials >= len(deltas) and service.stats.text_latency


@pytest.mark.parametrize("law", ["g711_ulaw", "g711_alaw"])
def test_telephony_formats(whisper, engine, vad_model, speech, law):
    from voxserve.audio.resample import resample

    client, _ = client_for(whisper, engine, vad_model)
    narrow = resample(speech[: 2 * SR], SR, 8000)
    codes = _g711_encode(narrow, law)
    with client, client.websocket_connect(URL) as ws:
        session = configure(ws, input_audio_format=law, turn_detection=None)
        assert session["input_audio_sample_rate"] == 8000
        for i in range(0, len(codes), 800):
            ws.send_json(
                {"type": "input_audio_buffer.append", "audio": base64.b64encode(codes[i : i + 800]).decode()}
            )
        ws.send_json({"type": "input_audio_buffer.commit"})
        events = receive_until(ws, "conversation.item.input_audio_transcription.completed")
    assert not [e for e in events if e["type"] == "error"]


def _g711_encode(x: np.ndarray, law: str) -> bytes:
    """Brute force: the nearest code by the decoder's own expansion table."""
    from voxserve.audio.g711 import expansion_table

    table = expansion_table("mulaw" if law == "g711_ulaw" else "alaw").astype(np.float32) / 32768
    order = np.argsort(table)
    idx = np.clip(np.searchsorted(table[order], x), 1, len(order) - 1)
    lo, hi = order[idx - 1], order[idx]
    pick = np.where(np.abs(table[lo] - x) <= np.abs(table[hi] - x), lo, hi)
    return pick.astype(np.uint8).tobytes()


def test_bad_input_gets_error_events_and_the_session_goes_on(whisper, engine, vad_model, speech):
    client, _ = client_for(whisper, engine, vad_model)
    bad = [
        ("not json at all", "invalid_json"),
        (json.dumps([1, 2]), "invalid_event"),
        (json.dumps({"type": "response.create"}), "unknown_event_type"),
        (json.dumps({"type": "input_audio_buffer.append", "audio": "%%%not base64"}), "invalid_audio"),
        (json.dumps({"type": "input_audio_buffer.append", "audio": 12}), "invalid_audio"),
        (json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(b"abc").decode()}), "invalid_audio"),
        (json.dumps({"type": "input_audio_buffer.append", "audio": ""}), "invalid_audio"),
        (json.dumps({"type": "input_audio_buffer.commit"}), "input_audio_buffer_commit_empty"),
        (json.dumps({"type": "transcription_session.update", "session": {"input_audio_format": "opus"}}), "invalid_audio"),
        (json.dumps({"type": "transcription_session.update", "session": {"input_audio_sample_rate": 44100}}), "invalid_audio"),
        (json.dumps({"type": "transcription_session.update", "session": {"turn_detection": {"type": "semantic"}}}), "invalid_turn_detection"),
        (json.dumps({"type": "transcription_session.update", "session": {"input_audio_transcription": {"language": "xx"}}}), "invalid_language"),
        (json.dumps({"type": "transcription_session.update", "session": "nope"}), "invalid_session"),
    ]  # fmt: skip
    with client, client.websocket_connect(URL) as ws:
        configure(ws, input_audio_sample_rate=16000, turn_detection=None)
        for frame, code in bad:
            ws.send_text(frame)
            event = ws.receive_json()
            assert event["type"] == "error" and event["error"]["code"] == code, (frame, event)
            assert event["error"]["message"]
        ws.send_bytes(b"\x00\x01binary")
        assert ws.receive_json()["error"]["code"] == "invalid_event"
        # still healthy: a valid utterance is transcribed
        append(ws, speech[:SR])
        ws.send_json({"type": "input_audio_buffer.commit"})
        receive_until(ws, "conversation.item.input_audio_transcription.completed")


def test_audio_faster_than_real_time_is_refused(whisper, engine, vad_model, speech):
    client, _ = client_for(whisper, engine, vad_model, max_ahead_s=2.0)
    with client, client.websocket_connect(URL) as ws:
        configure(ws, input_audio_sample_rate=16000, turn_detection=None)
        append(ws, speech[: SR // 2])
        append(ws, speech[: 3 * SR])  # 3.5 s of audio within milliseconds
        event = receive_until(ws, "error")[-1]
        assert event["error"]["code"] == "audio_too_fast"
        ws.send_json({"type": "input_audio_buffer.commit"})  # what was accepted is still transcribed
        receive_until(ws, "conversation.item.input_audio_transcription.completed")


def test_endless_garbage_closes_with_policy_code(whisper, engine, vad_model):
    client, _ = client_for(whisper, engine, vad_model)
    with client, client.websocket_connect(URL) as ws:
        ws.receive_json()
        for _ in range(60):
            ws.send_text("{")
        with pytest.raises(WebSocketDisconnect) as closed:
            while True:
                ws.receive_json()
    assert closed.value.code == 1008


def test_idle_session_is_closed(whisper, engine, vad_model):
    client, service = client_for(whisper, engine, vad_model, idle_timeout_s=0.3)
    with client, client.websocket_connect(URL) as ws:
        ws.receive_json()
        event = ws.receive_json()
        assert event["error"]["code"] == "session_idle_timeout"
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert closed.value.code == 1000 and service.open_streams == 0


def test_wrong_intent_and_api_keys(whisper, engine, vad_model):
    client, _ = client_for(whisper, engine, vad_model, keys=["k1"])
    with client:
        for url, headers, code in [
            ("/v1/realtime", {"authorization": "Bearer k1"}, "unsupported_intent"),
            (URL, {}, "invalid_api_key"),
            (URL, {"authorization": "Bearer wrong"}, "invalid_api_key"),
        ]:
            with client.websocket_connect(url, headers=headers) as ws:
                assert ws.receive_json()["error"]["code"] == code
                with pytest.raises(WebSocketDisconnect) as closed:
                    ws.receive_json()
                assert closed.value.code == 1008
        # browsers pass the key as a subprotocol
        with client.websocket_connect(URL, subprotocols=["realtime", "openai-insecure-api-key.k1"]) as ws:
            assert ws.receive_json()["type"] == "transcription_session.created"


def test_stream_cap_per_key_and_disconnect_frees_the_slot(whisper, engine, vad_model, speech):
    client, service = client_for(whisper, engine, vad_model, max_streams_per_key=1, keys=["a", "b"])
    with client:
        a = {"authorization": "Bearer a"}
        with client.websocket_connect(URL, headers=a) as ws:
            configure(ws, input_audio_sample_rate=16000, turn_detection=None)
            with client.websocket_connect(URL, headers=a) as second:
                event = second.receive_json()
                assert event["error"]["code"] == "too_many_streams"
                with pytest.raises(WebSocketDisconnect) as closed:
                    second.receive_json()
                assert closed.value.code == 1008
            with client.websocket_connect(URL, headers={"authorization": "Bearer b"}) as other:
                assert other.receive_json()["type"] == "transcription_session.created"
            # mid-utterance: audio and a final decode in flight, then the client vanishes
            append(ws, speech[: 2 * SR])
            ws.send_json({"type": "input_audio_buffer.commit"})
        deadline = time.monotonic() + 10
        while (service.open_streams or engine.active or engine.queued) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert service.open_streams == 0 and engine.active == 0 and engine.queued == 0
        with client.websocket_connect(URL, headers=a) as ws:  # the key's slot is free again
            assert ws.receive_json()["type"] == "transcription_session.created"


def test_page_is_served(whisper, engine, vad_model):
    client, _ = client_for(whisper, engine, vad_model)
    with client:
        page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "/v1/realtime?intent=transcription" in page.text and "partial" in page.text


def test_mounted_by_create_app(make_settings, speech):
    """create_app mounts the router; the model comes from the server's registry, keys from its settings."""
    from voxserve.server.app import create_app

    app = create_app(make_settings(api_keys=["secret"], preload=False, realtime_max_streams_per_key=1))
    with TestClient(app) as client:
        assert "voxserve live" in client.get("/").text
        with client.websocket_connect(URL + "&model=nope", headers={"authorization": "Bearer secret"}) as ws:
            assert ws.receive_json()["error"]["code"] == "model_not_found"
        with client.websocket_connect(URL, headers={"authorization": "Bearer secret"}) as ws:
            session = configure(ws, input_audio_sample_rate=16000, turn_detection=None)
            assert session["input_audio_transcription"]["model"] == "tiny"
            with client.websocket_connect(URL, headers={"authorization": "Bearer secret"}) as second:
                assert second.receive_json()["error"]["code"] == "too_many_streams"  # the settings' cap
            append(ws, speech[: 2 * SR])
            ws.send_json({"type": "input_audio_buffer.commit"})
            done = receive_until(ws, "conversation.item.input_audio_transcription.completed")[-1]
            assert isinstance(done["transcript"], str)
        with client.websocket_connect(URL) as ws:
            assert ws.receive_json()["error"]["code"] == "invalid_api_key"
        metrics = client.get("/metrics", headers={"authorization": "Bearer secret"}).text
    assert 'voxserve_live_streams{model="tiny"} 0.0' in metrics
    assert 'voxserve_live_latency_seconds_count{kind="final"} 1.0' in metrics
    assert 'voxserve_live_latency_seconds_count{kind="text"}' in metrics


def test_buffer_without_vad_is_capped(whisper, engine, vad_model, speech):
    client, service = client_for(whisper, engine, vad_model, max_item_s=2.0)
    with client, client.websocket_connect(URL) as ws:
        configure(ws, input_audio_sample_rate=16000, turn_detection=None)
        append(ws, speech[: int(1.5 * SR)])
        append(ws, speech[:SR])  # 2.5 s in one item: refused
        assert receive_until(ws, "error")[-1]["error"]["code"] == "input_audio_buffer_full"
        ws.send_json({"type": "input_audio_buffer.commit"})
        receive_until(ws, "conversation.item.input_audio_transcription.completed")
        append(ws, speech[:SR])  # a new item has room again
        ws.send_json({"type": "input_audio_buffer.commit"})
        events = receive_until(ws, "conversation.item.input_audio_transcription.completed")
        assert not [e for e in events if e["type"] == "error"]


def test_server_wide_cap_without_keys(whisper, engine, vad_model):
    client, service = client_for(whisper, engine, vad_model, max_streams_per_key=1, max_streams=2)
    with client, client.websocket_connect(URL) as a, client.websocket_connect(URL) as b:
        # no API keys: the per-key cap does not apply, the server-wide one does
        assert a.receive_json()["type"] == b.receive_json()["type"] == "transcription_session.created"
        with client.websocket_connect(URL) as c:
            assert c.receive_json()["error"]["code"] == "too_many_streams"
            with pytest.raises(WebSocketDisconnect) as closed:
                c.receive_json()
            assert closed.value.code == 1013
        assert service.open_streams == 2


@pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager:DeprecationWarning")
def test_the_openai_client_transcribes_over_the_websocket(make_settings, speech):
    """OpenAI's own Python client (its beta realtime connection) against the server on loopback."""
    openai = pytest.importorskip("openai")
    from tests.server.conftest import LiveServer
    from voxserve.server.app import create_app

    app = create_app(make_settings(api_keys=["sk-test"]))
    with LiveServer(app) as server:
        client = openai.OpenAI(
            api_key="sk-test",
            base_url=server.url + "/v1",
            websocket_base_url=server.url.replace("http", "ws") + "/v1",
        )
        with client.beta.realtime.connect(model="whisper-1", extra_query={"intent": "transcription"}) as conn:
            conn.send({"type": "transcription_session.update",
                       "session": {"input_audio_format": "pcm16", "turn_detection": None}})  # fmt: skip
            x24 = np.interp(np.arange(0, 2 * SR, 16000 / 24000), np.arange(2 * SR), speech[: 2 * SR])
            for i in range(0, len(x24), 4800):  # pcm16 at 24 kHz, OpenAI's default format
                conn.input_audio_buffer.append(audio=pcm16(x24[i : i + 4800].astype(np.float32)))
            conn.input_audio_buffer.commit()
            kinds = []
            for event in conn:
                kinds.append(event.type)
                if event.type == "conversation.item.input_audio_transcription.completed":
                    break
    assert kinds[0] == "transcription_session.created" and "transcription_session.updated" in kinds
    assert "input_audio_buffer.committed" in kinds and "error" not in kinds
    assert isinstance(event.transcript, str)


def test_random_events_never_break_the_session(whisper, engine, vad_model, speech):
    """Seeded fuzz: events of every known type (and others) with fields of random kinds and values."""
    rng = np.random.default_rng(7)
    types = ["transcription_session.update", "session.update", "input_audio_buffer.append",
             "input_audio_buffer.commit", "input_audio_buffer.clear", "response.create", "", None, 5]  # fmt: skip
    keys = ["input_audio_format", "input_audio_sample_rate", "input_audio_transcription", "turn_detection",
            "partial_interval_ms", "language", "prompt", "threshold", "silence_duration_ms", "prefix_padding_ms",
            "type", "model"]  # fmt: skip

    def value(depth: int = 0):
        makers = [
            lambda: None,
            lambda: True,
            lambda: int(rng.integers(-(10**12), 10**12)),
            lambda: float(rng.normal() * 1e6),
            lambda: "pcm16",
            lambda: "x" * int(rng.integers(0, 40)),
            lambda: base64.b64encode(rng.bytes(int(rng.integers(0, 64)))).decode(),
            lambda: {str(k): value(depth + 1) for k in rng.choice(keys, int(rng.integers(0, 4)))},
            lambda: [value(depth + 1) for _ in range(int(rng.integers(0, 3)))],
        ]
        return makers[int(rng.integers(0, len(makers) if depth < 2 else len(makers) - 2))]()

    client, service = client_for(whisper, engine, vad_model)
    with client, client.websocket_connect(URL) as ws:
        ws.receive_json()
        for i in range(300):
            if i % 20 == 19:  # a valid event now and then: 50 invalid ones in a row close the session
                ws.send_json({"type": "input_audio_buffer.clear"})
            event = {"type": types[int(rng.integers(0, len(types)))]}
            for k in rng.choice(["session", "audio", "event_id", *keys], int(rng.integers(0, 4))):
                event[str(k)] = value()
            ws.send_json(event)
        ws.send_json({"type": "the.end", "event_id": "the-end"})  # its error event echoes the id: a marker
        events = []
        while not (events and events[-1]["type"] == "error" and events[-1]["error"]["event_id"] == "the-end"):
            events.append(ws.receive_json())
        codes = {e["error"]["code"] for e in events if e["type"] == "error"}
        # the fuzz reached the checks of every kind of event (not only the JSON and type checks)
        assert {"unknown_event_type", "invalid_event", "invalid_audio", "invalid_session"} <= codes, codes
        ws.send_json({"type": "input_audio_buffer.clear"})
        receive_until(ws, "input_audio_buffer.cleared")
        configure_events = {"type": "transcription_session.update",
                            "session": {"input_audio_format": "pcm16", "input_audio_sample_rate": 16000,
                                        "turn_detection": None, "input_audio_transcription": None}}  # fmt: skip
        ws.send_json(configure_events)
        receive_until(ws, "transcription_session.updated", limit=5000)
        append(ws, speech[:SR])
        ws.send_json({"type": "input_audio_buffer.commit"})
        receive_until(ws, "conversation.item.input_audio_transcription.completed", limit=5000)
    assert service.open_streams == 0


def test_streams_share_the_engine_at_realtime_priority(whisper, vad_model, speech):
    """Partials of concurrent streams run in the same decode steps, all at realtime priority."""
    import asyncio

    from voxserve.engine.types import Priority
    from voxserve.live.session import LiveSession

    with make_engine(whisper.model, whisper.tokenizer, EngineConfig(max_slots=8)) as engine:
        rows, priorities = [], []
        launch, submit = engine.runner.launch, engine.submit
        engine.runner.launch = lambda slots, sample=False: (rows.append(len(slots)), launch(slots, sample))[1]
        engine.submit = lambda request, **kw: (priorities.append(request.priority), submit(request, **kw))[1]
        service = LiveService(whisper, engine, None, LiveOptions(partial_interval_s=0.05, max_ahead_s=1e6))

        async def stream(i: int) -> None:
            async def drop(event):
                return None

            session = LiveSession(service, drop)
            await session.update({"input_audio_sample_rate": 16000, "turn_detection": None})
            for k in range(20):
                await session.append(pcm16(speech[(i + k) * 1600 : (i + k + 1) * 1600]))
                await asyncio.sleep(0.02)
            # a partial answers before the commit ends the item (on a loaded machine one can take longer than
            # the 0.4 s of audio, and the commit cancels it: the test failed now and then)
            for _ in range(3000):
                if session.item is None or session.item.covered:
                    break
                await asyncio.sleep(0.01)
            await session.commit()
            while session.tasks:
                await asyncio.sleep(0.01)
            await session.close()

        async def main() -> None:
            await asyncio.gather(*(stream(i) for i in range(4)))

        asyncio.run(main())
    assert service.stats.partials >= 4 and service.stats.finals == 4
    assert set(priorities) == {Priority.REALTIME}
    assert max(rows) > 1, f"no decode step held more than one stream: {rows}"


def test_engine_fault_moves_live_streams_to_the_cpu_engine(make_settings, speech):
    """An injected engine fault mid-stream: the item is still transcribed (on the fall-back engine), and so is
    the next one; the server's health says what happened."""
    with TestClient(create_app_for_test(make_settings)) as client:
        runtime = client.app.state.ctx.registry.loaded["tiny"]
        engine = runtime.primary.engine
        inject_step_fault(engine, at_step=3)
        with client.websocket_connect(URL) as ws:
            configure(ws, input_audio_sample_rate=16000, turn_detection=None)
            for _ in range(2):
                append(ws, speech[: 2 * SR])
                ws.send_json({"type": "input_audio_buffer.commit"})
                events = receive_until(ws, "conversation.item.input_audio_transcription.completed")
                assert not [e for e in events if e["type"].endswith(".failed")]
        assert engine.failure is not None  # the fault really hit the engine
        assert client.get("/health").json()["engines_healthy"] == {"tiny": False}


def create_app_for_test(make_settings):
    from voxserve.server.app import create_app

    return create_app(make_settings(engine_slots=2))


def test_partial_prefix_is_forced_and_counts_in_the_fixed_length(whisper, engine, speech):
    import asyncio

    service = LiveService(whisper, engine, None, LiveOptions(fixed_tokens_per_second=3.0))
    prefix = "and so my fellow"
    forced = len(whisper.tokenizer.encode(" " + prefix))

    async def run():
        plain = await service.decode(speech[: 4 * SR], language="en", prompt=None)
        forced_run = await service.decode(speech[: 4 * SR], language="en", prompt=None, prefix=prefix)
        return plain, forced_run

    plain, with_prefix = asyncio.run(run())
    assert len(plain.tokens) == 12  # 3 tokens per second of 4 s, end-of-text suppressed
    assert len(with_prefix.tokens) == 12 - forced  # the forced words count in the transcript's length
    assert not with_prefix.text.startswith(prefix)  # the result holds what follows the prefix only


def test_decodes_are_capped_by_the_audio_length(whisper, engine, speech):
    import asyncio

    specs = []
    submit = engine.submit
    engine.submit = lambda request, **kw: (specs.append(request.spec), submit(request, **kw))[1]
    try:
        service = LiveService(whisper, engine, None, LiveOptions(max_tokens_per_second=5.0))
        asyncio.run(service.decode(speech[: 2 * SR], language="en", prompt=None))
    finally:
        engine.submit = submit
    assert specs[0].sample_len == 5 * 2 + 10  # not the window's 224


def test_sessions_arriving_together_share_one_service(make_settings, monkeypatch):
    """The model's live service is made at its first session, after the VAD loads in a worker thread: sessions
    that arrive meanwhile must all join that one service (stream caps and figures are per service). The VAD's
    load here waits until all three sessions have leased the model, so all of them arrive during it."""
    import threading
    from contextlib import asynccontextmanager

    import voxserve.audio.vad as vad_module
    from voxserve.server.app import create_app

    loads: list[float] = []
    all_arrived = threading.Event()

    class SlowVAD(vad_module.SileroVAD):
        def __init__(self, *args, **kwargs) -> None:
            loads.append(time.monotonic())
            assert all_arrived.wait(timeout=30)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(vad_module, "SileroVAD", SlowVAD)
    ready, done = threading.Barrier(4), threading.Event()
    app = create_app(make_settings())
    registry, arrived = app.state.ctx.registry, []
    lease = registry.lease

    @asynccontextmanager
    async def counted_lease(name):
        async with lease(name) as runtime:
            arrived.append(name)
            if len(arrived) == 3:
                all_arrived.set()
            yield runtime

    registry.lease = counted_lease
    with TestClient(app) as client:

        def session() -> None:
            with client.websocket_connect(URL) as ws:
                configure(ws, input_audio_sample_rate=16000, turn_detection=None)
                ready.wait(timeout=60)
                done.wait(timeout=60)

        threads = [threading.Thread(target=session) for _ in range(3)]
        for t in threads:
            t.start()
        ready.wait(timeout=60)
        streams = {alias: s.open_streams for alias, s in client.app.state.ctx.extras["live"].items()}
        done.set()
        for t in threads:
            t.join(timeout=60)
    assert streams == {"tiny": 3}
    assert len(loads) == 1  # and the VAD loaded once


def test_an_evicted_models_live_service_goes_with_it(make_settings, tiny_model_dir):
    """A live service holds its model: when the memory budget evicts the model, its service is dropped too."""
    import weakref

    from voxserve.server.app import create_app

    models = {name: str(tiny_model_dir) for name in ("a", "b")}
    with TestClient(create_app(make_settings(models=models, default_model="a"))) as probe:
        one = probe.app.state.ctx.registry.loaded["a"].memory_bytes()
    settings = make_settings(models=models, default_model="a", memory_budget_bytes=int(1.5 * one))
    with TestClient(create_app(settings)) as client:
        with client.websocket_connect(URL + "&model=a") as ws:
            configure(ws, input_audio_sample_rate=16000, turn_detection=None)
        services = client.app.state.ctx.extras["live"]
        model = weakref.ref(services["a"].whisper.model)
        with client.websocket_connect(URL + "&model=b") as ws:  # loading b evicts a
            configure(ws, input_audio_sample_rate=16000, turn_detection=None)
        assert list(services) == ["b"] and list(client.app.state.ctx.registry.loaded) == ["b"]
        import gc

        gc.collect()
        assert model() is None  # nothing holds the evicted model any more
