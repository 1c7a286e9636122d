"""Server test fixtures: a tiny random model written as a Hugging Face directory (so the server loads it the
way it loads any checkpoint), settings pointing at temporary job storage, and short test audio."""

from __future__ import annotations

import base64
import io
import threading
import wave
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import TINY
from tests.support import decisive_model
from voxserve.server.settings import ServerSettings
from voxserve.train.export import export_hf


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer) -> Path:
    # A decisive model ends its sequences at varied lengths, so requests finish quickly and differ.
    model = decisive_model(TINY, tokenizer, std=0.2, eot_boost=2.0)
    return export_hf(model, tokenizer, tmp_path_factory.mktemp("models") / "tiny")


def settings_for(model_dir: Path, tmp: Path, **overrides) -> ServerSettings:
    """The test server's settings: the tiny model on the CPU, its jobs under ``tmp``."""
    kw = {
        "models": {"tiny": str(model_dir)},
        "default_model": "tiny",
        "device": "cpu",
        "jobs_db": tmp / "jobs.sqlite3",
        "jobs_dir": tmp / "jobs",
        "engine_slots": 4,
    }
    return ServerSettings(**{**kw, **overrides})


@pytest.fixture
def make_settings(tmp_path, tiny_model_dir):
    def make(**overrides) -> ServerSettings:
        return settings_for(tiny_model_dir, tmp_path, **overrides)

    return make


def wav_bytes(samples: np.ndarray, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype(np.int16).tobytes())
    return buf.getvalue()


def tone(seconds: float, freq: float = 440.0, seed: int = 0) -> np.ndarray:
    """A tone with a little noise: not speech, but audio the random model decodes into some tokens."""
    t = np.arange(round(seconds * 16000)) / 16000
    rng = np.random.default_rng(seed)
    return (0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="session")
def short_wav() -> bytes:
    return wav_bytes(tone(2.0))


class LiveServer:
    """uvicorn serving an app on a free loopback port, in a thread of this process."""

    def __init__(self, app) -> None:
        import socket
        import threading

        import uvicorn

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        sock.close()
        self.app = app
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        import time

        self.thread.start()
        deadline = time.monotonic() + 120
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)


# ----- the realtime WebSocket's client side (OpenAI's transcription events)


def pcm16(x: np.ndarray) -> str:
    return base64.b64encode((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()).decode()


def append(ws, x: np.ndarray) -> None:
    ws.send_json({"type": "input_audio_buffer.append", "audio": pcm16(x)})


def receive_until(ws, type_: str, limit: int = 500) -> list[dict]:
    events = []
    for _ in range(limit):
        events.append(ws.receive_json())
        if events[-1]["type"] == type_:
            return events
    raise AssertionError(f"no {type_} in {[e['type'] for e in events]}")


def configure(ws, **session) -> dict:
    assert ws.receive_json()["type"] == "transcription_session.created"
    ws.send_json({"type": "transcription_session.update", "session": session})
    event = ws.receive_json()
    assert event["type"] == "transcription_session.updated", event
    return event["session"]


def fault_clips() -> list[bytes]:
    """Six short distinct clips, for requests that are in flight when an engine fails."""
    return [wav_bytes(tone(1.5, freq=200 + 150 * i, seed=i)) for i in range(6)]


def post_clip(client, audio: bytes):
    """A greedy English transcription of ``audio`` by the tiny model."""
    return client.post(
        "/v1/audio/transcriptions",
        files={"file": ("a.wav", audio, "audio/wav")},
        data={"model": "tiny", "temperature": "0", "language": "en"},
    )


def start_posts(client, clips: list[bytes]) -> tuple[list, list[threading.Thread]]:
    """Every clip posted at once, each from a thread of its own (started): their answers, filled in as they
    come, and the threads to join."""
    answers: list = [None] * len(clips)

    def send(i: int) -> None:
        answers[i] = post_clip(client, clips[i])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(clips))]
    for t in threads:
        t.start()
    return answers, threads


def inject_step_fault(engine, at_step: int) -> None:
    """Make ``engine``'s runner raise a CUDA-style error on its ``at_step``-th decode step (1-based) and run
    normally otherwise: what a GPU fault mid-decode looks like to the server."""
    real_launch = engine.runner.launch
    steps = {"n": 0}

    def faulty_launch(slots, sample):
        steps["n"] += 1
        if steps["n"] == at_step:
            raise RuntimeError("CUDA error: an illegal memory access was encountered (injected)")
        return real_launch(slots, sample)

    engine.runner.launch = faulty_launch
