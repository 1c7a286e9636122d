"""The live-stream benchmark: plan checks, caller tracks, the oracle VAD, and one short run end to end."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from tests.conftest import ASSETS, AUDIO, SHARED
from voxserve.bench.weights import BenchError
from voxserve.live.callers import OracleVAD, caller_audio
from voxserve.live.streambench import StreamBenchPlan, format_streams, run_streams

SR = 16000


def _plan(tmp_path, **kw) -> StreamBenchPlan:
    base = dict(
        streams=(1,),
        device="cpu",
        precision="fp32",
        audio=AUDIO / "hifitts-6097",
        tiktoken=ASSETS / "multilingual.tiktoken",
        out=tmp_path,
        vad_model=SHARED / "vad" / "silero_vad.onnx",
    )
    return StreamBenchPlan(**{**base, **kw})


def test_plan_is_checked(tmp_path):
    for bad, match in [
        ({"streams": ()}, "positive stream counts"),
        ({"streams": (0,)}, "positive stream counts"),
        ({"seconds": 2.0}, "must exceed the warm-up"),
        ({"chunk_ms": 5}, "chunk-ms"),
        ({"precision": "int4"}, "precision"),
        ({"vad": "energy"}, "silero or oracle"),
        ({"window_buckets_s": ()}, "window-buckets"),
        ({"window_buckets_s": (2.0, 0.0)}, "window-buckets"),
        ({"window_buckets_s": (45.0,)}, "window-buckets"),
        ({"encoder_precision": "int4"}, "encoder-precision must be fp8"),
        ({"encoder_precision": "fp8"}, "half-precision model"),
        ({"cross_kv": "int4"}, "cross-kv must be model or int8"),
        ({"cross_kv": "int8"}, "CUDA only"),
    ]:
        with pytest.raises(BenchError, match=match):
            _plan(tmp_path, **bad)


def test_caller_tracks_and_oracle_vad():
    clips = [np.full(SR, 0.5, np.float32), np.full(2 * SR, -0.5, np.float32)]
    tracks = caller_audio(clips, 3, 6.0, seed=0)
    assert len(tracks) == 3 and all(len(t.audio) == 6 * SR for t in tracks)
    for t in tracks:
        assert t.speech
        for a, b in t.speech:  # the spans are exactly where the track is not silent
            assert 0 <= a < b <= len(t.audio)
            assert np.all(t.audio[a:b] != 0)
        mask = np.zeros(len(t.audio), bool)
        for a, b in t.speech:
            mask[a:b] = True
        assert np.all(t.audio[~mask] == 0)
    # the oracle's events go out as JSON over --transport ws: plain ints
    oracle = OracleVAD(tracks[0].speech)
    events = [e for k in range(60) for e in oracle.feed(tracks[0].audio[k * 1600 : (k + 1) * 1600])]
    assert [e.kind for e in events][:2] == ["start", "end"]
    json.dumps([[a, b] for t in tracks for a, b in t.speech] + [e.sample for e in events])
    vad = OracleVAD([(SR, 2 * SR)], pad_ms=100, silence_ms=500)
    assert vad.feed(np.zeros(SR - 1)) == []
    (start,) = vad.feed(np.zeros(1))
    assert (start.kind, start.sample) == ("start", SR - 1600)
    assert vad.feed(np.zeros(SR + 7999)) == []  # the end is known only after 500 ms of silence
    (end,) = vad.feed(np.zeros(1))
    assert (end.kind, end.sample) == ("end", 2 * SR + 1600)


@pytest.mark.slow
def test_short_run_writes_a_result(tmp_path):
    pytest.importorskip("onnxruntime")
    plan = _plan(tmp_path, seconds=4.0, warmup_s=1.0, short_windows=True)
    doc, path = run_streams(plan, ["voxserve", "bench", "--streams", "1"], log=lambda line: None)
    assert json.loads(path.read_text())["figures"] == doc["figures"]
    (row,) = doc["figures"]["streams"]
    assert row["streams"] == 1 and row["chunks_counted"] > 0
    assert row["p50_ms"] <= row["p99_ms"] <= row["max_ms"]
    assert row["partials"] + row["finals"] > 0
    assert doc["streams_held"] in (0, 1) and (doc["streams_held"] == 1) == row["held"]
    assert "streams held at p99" in format_streams(doc)
    # asked for (the plan's default) but inert on the CPU: the record says what ran
    assert plan.overlap_admissions and doc["settings"]["overlap_admissions"] is False


def test_client_side_latencies_over_websockets():
    from voxserve.live.wsbench import _latencies

    chunk_ms, sent = 100, [10.0 + 0.1 * k for k in range(10)]  # chunk k ends at audio (k + 1) * 100 ms
    events = [
        (10.25, {"type": "input_audio_buffer.speech_started", "audio_start_ms": 150, "item_id": "a"}),
        (
            10.45,
            {
                "type": "conversation.item.input_audio_transcription.delta",
                "item_id": "a",
                "audio_end_ms": 400,
            },
        ),
        (10.75, {"type": "input_audio_buffer.speech_stopped", "audio_end_ms": 700, "item_id": "a"}),
        (10.9, {"type": "conversation.item.input_audio_transcription.completed", "item_id": "a"}),
        (11.0, {"type": "input_audio_buffer.speech_started", "audio_start_ms": 900, "item_id": "b"}),
    ]
    latencies, missing = _latencies(events, sent, chunk_ms, counted_from=0.0)
    # chunks ending at 200..400 ms: the delta at 10.45; 500..700 ms: the completed at 10.9; 1000 ms: item b,
    # which never got text; chunks outside speech are not counted
    expected = [10.45 - sent[k] for k in (1, 2, 3)] + [10.9 - sent[k] for k in (4, 5, 6)]
    assert latencies == pytest.approx(expected) and missing == 1
    assert _latencies(events, sent, chunk_ms, counted_from=10.35) == (pytest.approx(expected[3:]), 1)


def test_transport_is_checked(tmp_path):
    with pytest.raises(BenchError, match="inproc, ws or server"):
        _plan(tmp_path, transport="grpc")


@pytest.mark.slow
def test_server_transport_measures_the_whole_server_with_its_engine_process(tmp_path, monkeypatch):
    """--transport server --engine-process: `voxserve serve`'s application with its engine in a process of its
    own, callers over WebSockets from client processes. The same caller twice gets the same count of finished
    utterances (figures afresh for each stream count), and the environment's server settings do not reach the
    server under test."""
    pytest.importorskip("fastapi")
    monkeypatch.setenv("VOXSERVE_MEMORY_BUDGET_BYTES", "1000")  # would refuse to load any model
    plan = _plan(
        tmp_path, streams=(1, 1), seconds=4.0, warmup_s=1.0, short_windows=True, vad="oracle",
        transport="server", engine_process=True, mels="engine",
    )  # fmt: skip
    doc, _ = run_streams(plan, ["voxserve", "bench", "--streams", "1,1"], log=lambda line: None)
    one, again = doc["figures"]["streams"]
    for row in (one, again):
        assert row["chunks_counted"] > 0 and row["chunks_without_text"] == 0
        # the server's own figures for the run: its live service keeps them for the bench
        assert row["final_p50_ms"] is not None and row["decodes_per_s"] > 0 and row["engine_steps_per_s"] > 0
    assert one["finals"] == again["finals"] > 0
    assert doc["settings"]["transport"] == "server" and doc["settings"]["engine_process"] is True


def test_callers_send_whole_pcm16_chunks():
    from voxserve.live.callers import chunk_payloads, pcm16, session_update

    audio = np.linspace(-1.5, 1.5, 1000, dtype=np.float32)
    pcm = pcm16(audio)
    assert pcm.dtype == np.dtype("<i2") and pcm[0] == -32767 and pcm[-1] == 32767  # clipped to [-1, 1]
    payloads = chunk_payloads(pcm, 300)
    assert len(payloads) == 3  # the last 100 samples are no whole chunk
    assert b"".join(base64.b64decode(p) for p in payloads) == pcm[:900].tobytes()
    assert session_update("en")["session"]["input_audio_transcription"] == {"language": "en"}


def test_window_buckets_flag_parses_and_records_as_typed():
    """`--window-buckets 2,8,16` reaches the plan as seconds, and the result file's command line spells it as
    typed, so the run can be repeated; a malformed list is a usage error."""
    import argparse

    from voxserve.cli import bench as cli

    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "--streams", "2", "--short-windows", "--window-buckets", "2,8,16"])
    assert args.window_buckets == (2.0, 8.0, 16.0)
    line = cli.command_line(args)
    assert line[line.index("--window-buckets") + 1] == "2,8,16"
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "--window-buckets", "2,x"])
    assert args.cross_kv == "model"
    assert parser.parse_args(["bench", "--streams", "2", "--cross-kv", "int8"]).cross_kv == "int8"
    # overlapped admissions are on unless switched off, and the recorded line says which
    assert args.overlap_admissions and "--overlap-admissions" in line
    serial = parser.parse_args(["bench", "--streams", "2", "--no-overlap-admissions", "--cross-kv", "int8"])
    assert not serial.overlap_admissions
    assert "--no-overlap-admissions" in cli.command_line(serial)
    for run in (args, serial):  # the recorded line parses back to the same run
        assert parser.parse_args(cli.command_line(run)[1:]) == run
