"""`voxserve serve --engine-process`: each model's engine in a process of its own (engine/remote.py). The same
answers as the engine in a thread, over HTTP and the realtime WebSocket; its metrics still reach /metrics; a
killed engine process moves every accepted request to a CPU engine in the server's process; the serve command
stops its engine process with it."""

from __future__ import annotations

import os
import signal
import time

import httpx
import numpy as np
import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402

from tests.conftest import AUDIO, TINY  # noqa: E402
from tests.server.conftest import (  # noqa: E402
    append,
    configure,
    fault_clips,
    post_clip,
    receive_until,
    settings_for,
    start_posts,
    tone,
    wav_bytes,
)
from tests.server.test_process import ServerProcess  # noqa: E402
from tests.support import read_wav  # noqa: E402
from voxserve.api import WhisperModel  # noqa: E402
from voxserve.engine.engine import EngineError  # noqa: E402
from voxserve.engine.remote import EngineProcess  # noqa: E402
from voxserve.engine.runner import slot_bytes  # noqa: E402
from voxserve.engine.types import EngineConfig  # noqa: E402
from voxserve.model.load import CheckpointInfo, init_random  # noqa: E402
from voxserve.server.app import create_app  # noqa: E402
from voxserve.server.metrics import ServerMetrics  # noqa: E402
from voxserve.server.runtime import ModelRuntime  # noqa: E402
from voxserve.server.settings import ServerSettings  # noqa: E402

pytestmark = pytest.mark.slow

SR = 16000
URL = "/v1/realtime?intent=transcription"


def _post_all(client, clips: list[bytes]) -> list:
    """Every clip at once, so that their windows share the engine's steps."""
    answers, threads = start_posts(client, clips)
    for t in threads:
        t.join()
    return answers


def _live_transcript(client, x: np.ndarray) -> str:
    with client.websocket_connect(URL) as ws:
        configure(ws, input_audio_sample_rate=16000, turn_detection=None)
        for i in range(0, len(x), 3200):
            append(ws, x[i : i + 3200])
        ws.send_json({"type": "input_audio_buffer.commit"})
        events = receive_until(ws, "conversation.item.input_audio_transcription.completed")
    for event in events:
        assert not event["type"].endswith(".failed") and event["type"] != "error", event
    return events[-1]["transcript"]


@pytest.fixture(scope="module")
def thread_answers(make_settings_module):
    """What the engine in a thread answers, and the decode steps its start-up counted: the reference for the
    engine process."""
    speech = read_wav(AUDIO / "samples" / "jfk.wav")[: 3 * SR]
    with TestClient(create_app(make_settings_module(engine_slots=2, max_concurrency=6))) as client:
        started = _metric(client.get("/metrics").text, "voxserve_batch_size_count")
        texts = [r.json()["text"] for r in _post_all(client, fault_clips())]
        live = _live_transcript(client, speech)
    return texts, live, speech, started


@pytest.fixture(scope="module")
def make_settings_module(tmp_path_factory, tiny_model_dir):
    def make(**overrides) -> ServerSettings:
        return settings_for(tiny_model_dir, tmp_path_factory.mktemp("server"), **overrides)

    return make


def test_answers_and_metrics_equal_the_engine_in_a_thread(make_settings_module, thread_answers):
    texts, live, speech, started = thread_answers
    settings = make_settings_module(engine_slots=2, max_concurrency=6, engine_process=True)
    with TestClient(create_app(settings)) as client:
        # start-up's one silent window, its steps counted alike (the graphs' warm-up, which runs steps on CUDA,
        # in neither: the GPU test checks that)
        assert _metric(client.get("/metrics").text, "voxserve_batch_size_count") == started > 0
        runtime = client.app.state.ctx.registry.loaded["tiny"]
        engine = runtime.primary.engine
        assert isinstance(engine, EngineProcess) and engine.n_slots == 2
        answers = _post_all(client, fault_clips())
        assert [r.status_code for r in answers] == [200] * len(answers)
        assert [r.json()["text"] for r in answers] == texts
        assert _live_transcript(client, speech) == live
        metrics = client.get("/metrics").text
        # the server's weights and the engine process's copy, and its slots
        model = runtime.primary.whisper.model
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        assert runtime.memory_bytes() == 2 * weights + 2 * slot_bytes(model, "model")
        pid = engine._process.pid
    # what the engine's process saw reached the server's metrics
    assert _metric(metrics, "voxserve_batch_size_count") > 0
    assert _metric(metrics, 'voxserve_stage_seconds_count{stage="encoder"}') > 0
    assert _metric(metrics, 'voxserve_stage_seconds_count{stage="queue_wait"}') >= len(texts)
    assert 'voxserve_engine_active_slots{device="cpu",model="tiny"}' in metrics
    assert 'voxserve_engine_healthy{model="tiny"} 1.0' in metrics
    assert not _alive(pid)  # the app's shutdown stopped the engine's process


def test_a_killed_engine_process_moves_everything_to_a_cpu_engine(make_settings_module, thread_answers):
    texts, live, speech, _ = thread_answers
    clips = fault_clips()
    settings = make_settings_module(engine_slots=2, max_concurrency=6, engine_process=True)
    with TestClient(create_app(settings)) as client:
        runtime = client.app.state.ctx.registry.loaded["tiny"]
        engine = runtime.primary.engine
        answers, threads = start_posts(client, clips)
        deadline = time.monotonic() + 60
        while not engine._tickets and time.monotonic() < deadline:  # windows in the engine's process
            time.sleep(0.001)
        os.kill(engine._process.pid, signal.SIGKILL)
        for t in threads:
            t.join()
        assert engine.failure is not None  # the engine process's death was noticed
        assert (engine.queued, engine.active) == (
            0,
            0,
        )  # its load in the metrics, no longer what it last said
        assert [a.status_code for a in answers] == [200] * len(clips)
        assert [a.json()["text"] for a in answers] == texts  # nothing lost, nothing changed
        assert client.get("/health").json()["engines_healthy"] == {"tiny": False}
        assert not runtime.current.remote  # the CPU engine runs in the server's process
        assert _live_transcript(client, speech) == live
        assert 'voxserve_engine_fallbacks_total{model="tiny"} 1.0' in client.get("/metrics").text
        deadline = time.monotonic() + 60
        while not engine._closed and time.monotonic() < deadline:  # closed in a thread of its own
            time.sleep(0.05)
        assert engine._closed


def test_a_loader_that_cannot_cross_to_the_process_is_a_clear_error(tokenizer):
    whisper = WhisperModel(
        init_random(TINY, seed=0), tokenizer, CheckpointInfo("tiny", "random", None), is_random=True
    )
    with pytest.raises(EngineError, match="module-level function"):
        ModelRuntime(
            "tiny", "random", whisper, loader=lambda *a, **k: whisper, engine_config=EngineConfig(max_slots=2),
            metrics=ServerMetrics(), engine_process=True,
        )  # fmt: skip


def test_serve_engine_process_answers_and_stops_its_engine(tiny_model_dir, tmp_path):
    server = ServerProcess(tiny_model_dir, tmp_path)
    server.args.append("--engine-process")
    server.start()
    try:
        children = _children(server.proc.pid)
        engines = [pid for pid in children if _is_engine_process(pid)]
        files = {"file": ("a.wav", wav_bytes(tone(2.0)), "audio/wav")}
        r = httpx.post(
            server.url + "/v1/audio/transcriptions", files=files, data={"model": "tiny"}, timeout=120
        )
        assert r.status_code == 200 and "text" in r.json()
        assert _metric(httpx.get(server.url + "/metrics").text, "voxserve_batch_size_count") > 0
    finally:
        code = server.kill(signal.SIGTERM)
    assert code in (0, -signal.SIGTERM), server.log.read_text()[-2000:]
    assert len(engines) == 1  # the model's engine ran in a process of its own
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in children)


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.split(" ")[0] == name:
            return float(line.split(" ")[1])
    raise AssertionError(f"{name} not in the metrics")


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            out += [int(c) for c in f.read().split()]
    return out


def _is_engine_process(pid: int) -> bool:
    """A process multiprocessing spawned to run a target (its resource tracker is spawned too, differently)."""
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        cmdline = f.read().decode(errors="replace")
    return "spawn_main" in cmdline and "resource_tracker" not in cmdline


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.gpu
def test_on_cuda_the_engine_process_answers_as_the_thread(make_settings_module):
    """The served path on the GPU (fp16, CUDA graphs captured in the engine's process, overlapped admissions):
    requests one at a time, so that both engines run the same batches, give the same text."""
    speech = read_wav(AUDIO / "samples" / "jfk.wav")[: 3 * SR]
    answers = {}
    for process in (False, True):
        settings = make_settings_module(device="cuda", engine_slots=8, engine_process=process)
        with TestClient(create_app(settings)) as client:
            runtime = client.app.state.ctx.registry.loaded["tiny"]
            assert runtime.primary.remote is process
            started = _metric(client.get("/metrics").text, "voxserve_batch_size_count")
            texts = [post_clip(client, a).json()["text"] for a in fault_clips()]
            answers[process] = (started, texts, _live_transcript(client, speech))
            if process:
                engine = runtime.primary.engine
                assert engine.info["device"].startswith("cuda") and engine.device_bytes > 0
                # the server's GPU memory includes its engine process's, as last reported
                device = engine.info["device"] if ":" in engine.info["device"] else "cuda:0"
                held = _metric(client.get("/metrics").text, f'voxserve_gpu_memory_bytes{{device="{device}"}}')
                assert held >= engine.device_bytes
                assert client.get("/health").json()["engines_healthy"] == {"tiny": True}
    assert answers[True] == answers[False]  # start-up's steps counted alike, and the same text
    assert any(answers[True][1])  # the decisive random model writes something
