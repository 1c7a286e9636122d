"""``voxserve bench``: result documents, machine description, inputs, and that every subject really does the
benchmark's fixed work (exactly n tokens per window, end-of-text never emitted) on the same random weights."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import numpy as np
import pytest
import torch

from tests.conftest import ASSETS, AUDIO, TINY
from voxserve.bench import machine, report, results, suites
from voxserve.bench.inputs import features, read_wav_16k, speech_clips, speech_windows
from voxserve.bench.peers.ct2 import max_length_for
from voxserve.bench.subjects import engine_subject, prompt_tokens, reference_subject, subject_from_decoder
from voxserve.bench.weights import NAMED_DIMS, BenchError, bench_tokenizer, random_hf_dir

TIKTOKEN = ASSETS / "multilingual.tiktoken"
SPEECH = AUDIO / "hifitts-6097"
CPU = torch.device("cpu")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # The CI machine has 2 cores that other jobs share; one thread keeps these small models fast and steady.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tok():
    return bench_tokenizer(TINY, TIKTOKEN)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, tok):
    return random_hf_dir(TINY, tmp_path_factory.mktemp("bench") / "tiny-hf", TIKTOKEN, seed=3)


@pytest.fixture(scope="module")
def windows():
    return speech_windows(speech_clips(SPEECH), 30.0, 2)


@pytest.fixture(scope="module")
def mel(windows):
    return features(windows, TINY.n_mels, CPU)


# ----------------------------------------------------------------------------------- result documents


def _doc(**figures) -> dict:
    doc = results.new_document(
        suite="all",
        command=["voxserve", "bench"],
        machine=machine.machine_info(CPU),
        settings={"dims": "tiny"},
        created=datetime(2026, 11, 21, 5, 30, tzinfo=UTC),
    )
    results.add_subject(
        doc, name="voxserve-reference", side="voxserve", device="cpu", precision="float32", config={}
    )
    results.add_subject(doc, name="ctranslate2-int8", side="peer", device="cpu", precision="int8", config={})
    for suite, rows in figures.items():
        doc["figures"][suite].extend(rows)
    return doc


def _offline_row(subject: str, rtf: float) -> dict:
    return {"subject": subject, "batch": 1, "n_inputs": 2, "audio_s": 60.0, "wall_s": 60.0 / rtf,
            "realtime_factor": rtf, "tokens_per_input": 100, "ms_per_input": 30000 / rtf}  # fmt: skip


def _latency_row(subject: str, seconds: float, ms: float) -> dict:
    return {"subject": subject, "input_s": seconds, "tokens": 20 if seconds == 5 else 100, "repeats": 1,
            "median_ms": ms, "p90_ms": ms, "min_ms": ms, "samples_ms": [ms]}  # fmt: skip


def test_document_validates_writes_and_reads_back(tmp_path):
    doc = _doc(
        offline=[_offline_row("voxserve-reference", 10.0), _offline_row("ctranslate2-int8", 40.0)],
        latency=[
            _latency_row("voxserve-reference", 30.0, 1000.0),
            _latency_row("ctranslate2-int8", 30.0, 500.0),
        ],
    )
    path = results.write_result(doc, tmp_path, "amd-epyc-2c")
    assert path.name == "2026-11-21T0530_all_tiny_amd-epyc-2c.json"
    assert results.read_result(path) == json.loads(json.dumps(doc))
    again = results.write_result(doc, tmp_path, "amd-epyc-2c")  # never overwrites an earlier run
    assert again.name == "2026-11-21T0530_all_tiny_amd-epyc-2c-run2.json" and path.exists()
    third = results.write_result(doc, tmp_path, "amd-epyc-2c")
    assert third.name.endswith("-run3.json")  # letters, digits, '.', '_' and '-' only: copyable anywhere
    table = report.format_table(doc)
    assert "voxserve-reference" in table and "ctranslate2-int8" in table
    assert "offline 0.25x" in table and "30 s latency 0.50x" in table  # voxserve / peer, >1 = voxserve faster


def test_the_table_shows_medians_over_rounds():
    rows = [(1000.0, 400.0), (3000.0, 500.0), (1200.0, 900.0)]  # (voxserve, peer) 30 s latency per round
    doc = _doc(
        latency=[
            {**_latency_row(subject, 30.0, ms), "round": r}
            for r, pair in enumerate(rows)
            for subject, ms in zip(("voxserve-reference", "ctranslate2-int8"), pair, strict=True)
        ]
    )
    doc["settings"]["rounds"] = 3
    table = report.format_table(doc)
    assert "1,200 (p90 1,200)" in table and "500 (p90 500)" in table  # medians, not the first or last round
    assert "30 s latency 0.42x" in table and "medians over 3 rounds" in table


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.update(schema="other/1"), "schema"),
        (lambda d: d["figures"].update(offline=[]), "no figures"),
        (lambda d: d["figures"]["offline"][0].pop("realtime_factor"), "lacks"),
        (lambda d: d["figures"]["offline"][0].update(subject="nobody"), "not listed"),
        (lambda d: d["figures"]["offline"][0].update(wall_s="fast"), "number"),
        (lambda d: d["subjects"][0].update(side="other"), "side"),
        (lambda d: d["machine"].pop("gpu"), "machine.gpu"),
        (lambda d: d["figures"].update(speed=[]), "unknown suites"),
    ],
)
def test_invalid_documents_are_refused(tmp_path, change, message):
    doc = _doc(offline=[_offline_row("voxserve-reference", 10.0)])
    change(doc)
    with pytest.raises(results.ResultError, match=message):
        results.write_result(doc, tmp_path, "m")
    assert not list(tmp_path.iterdir())


def test_machine_info_without_gpu():
    info = machine.machine_info(CPU)
    assert info["gpu"] is None
    assert info["cpu"]["logical_cores"] >= 1 and info["cpu"]["torch_threads"] >= 1
    assert info["ram_gib"] > 0
    assert info["libraries"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert re.fullmatch(r"[0-9a-f]{64}", info["voxserve"]["source_sha256"])
    assert info["voxserve"]["git_commit"] is None or re.fullmatch(
        r"[0-9a-f]{40}", info["voxserve"]["git_commit"]
    )
    label = machine.machine_label(info)
    assert re.fullmatch(r"[a-z0-9-]+", label) and label.endswith("c")
    snap = machine.load_snapshot()
    assert snap["load_average"] is None or len(snap["load_average"]) == 3
    a = {"monotonic_s": 10.0, "cpu_pressure_total_us": 1_000_000}
    b = {"monotonic_s": 12.0, "cpu_pressure_total_us": 1_500_000}
    assert machine.contention_pct(a, b) == 25.0  # 0.5 s of waiting in 2 s
    assert machine.contention_pct({"monotonic_s": 1.0}, b) is None


def test_machine_label_names_the_gpu():
    info = {"gpu": {"name": "NVIDIA H200"}, "cpu": {"model": "x", "usable_cores": 16}}
    assert machine.machine_label(info) == "nvidia-h200"


# --------------------------------------------------------------------------------------------- inputs


def test_windows_are_consecutive_real_speech_and_wrap_around():
    clips = speech_clips(SPEECH)
    total = sum(c.size for c in clips)
    ws = speech_windows(clips, 5.0, 3)
    assert [w.size for w in ws] == [80000] * 3
    joined = np.concatenate(clips)
    np.testing.assert_array_equal(np.concatenate(ws), joined[:240000])
    many = speech_windows(clips, 30.0, total // 480000 + 2)  # more audio than the clips hold: wraps
    assert all(w.size == 480000 and np.abs(w).max() > 0.01 for w in many)
    assert features(ws[:2], 80, CPU).shape == (2, 80, 3000)  # 5 s windows are padded to 30 s


def test_inputs_refuse_other_formats(tmp_path):
    digits = sorted((AUDIO / "spoken-digits-8k").glob("*.wav"))[0]
    with pytest.raises(BenchError, match="16 kHz"):
        read_wav_16k(digits)
    with pytest.raises(BenchError, match="no .wav"):
        speech_clips(tmp_path)
    with pytest.raises(BenchError, match="no audio folder"):
        speech_clips(tmp_path / "missing")


def test_named_dims_and_weights_directory(hf_dir, tok):
    assert NAMED_DIMS["large-v3"].n_mels == 128 and NAMED_DIMS["base"].n_text_layer == 6
    gen = json.loads((hf_dir / "generation_config.json").read_text())
    assert gen["no_timestamps_token_id"] == tok.no_timestamps and len(gen["lang_to_id"]) == TINY.num_languages
    assert (hf_dir / "vocab.json").is_file() and (hf_dir / "model.safetensors").is_file()
    stamp = (hf_dir / "model.safetensors").stat().st_mtime_ns
    assert random_hf_dir(TINY, hf_dir, TIKTOKEN, seed=3) == hf_dir  # reused, not rewritten
    assert (hf_dir / "model.safetensors").stat().st_mtime_ns == stamp
    assert prompt_tokens(tok) == (tok.sot, tok.language_token("en"), tok.transcribe, tok.no_timestamps)


# ------------------------------------------------------------------------------------ the fixed work


@pytest.mark.parametrize("build", [reference_subject, engine_subject], ids=["reference", "engine"])
def test_voxserve_subject_decodes_exactly_n_tokens(hf_dir, tok, mel, windows, build):
    subject = build(hf_dir, tok, CPU, "fp32")
    for n in (100, 20):
        rows = subject.decode(mel, n)
        assert [len(r) for r in rows] == [n, n]
        assert all(tok.eot not in r for r in rows)
    # The suites time the same call and check the count themselves.
    assert suites.timed_call(subject, windows, 100, tok.eot) > 0
    if subject.close:
        subject.close()


def test_a_subject_that_stops_early_fails_the_run(mel, tok, windows):
    def short(m: torch.Tensor, n: int) -> list[list[int]]:
        return [[1] * (n - 1) for _ in range(m.shape[0])]

    def with_eot(m: torch.Tensor, n: int) -> list[list[int]]:
        return [[1] * (n - 1) + [tok.eot] for _ in range(m.shape[0])]

    for fn, message in ((short, "not exactly"), (with_eot, "end-of-text")):
        subject = subject_from_decoder("fake", fn, device="cpu", precision="float32", n_mels=80)
        with pytest.raises(BenchError, match=message):
            suites.timed_call(subject, windows, 100, tok.eot)


def test_transformers_peer_decodes_exactly_n_tokens_like_the_reference(hf_dir, tok, mel):
    pytest.importorskip("transformers")
    from voxserve.bench.peers.hf import hf_subject

    peer = hf_subject(hf_dir, tok, CPU, "fp32", cache="static")
    rows = peer.decode(mel, 100)
    assert [len(r) for r in rows] == [100, 100]
    assert all(tok.eot not in r for r in rows)
    # Same weights, same features, greedy: the same tokens as voxserve's reference.
    assert rows == reference_subject(hf_dir, tok, CPU, "fp32").decode(mel, 100)
    assert peer.config["cache_implementation"] == "static" and peer.side == "peer"


def test_ctranslate2_peer_decodes_exactly_n_tokens(hf_dir, tok, mel):
    pytest.importorskip("ctranslate2")
    from voxserve.bench.peers.ct2 import ct2_subject

    for n in (1, 20, 100):
        assert min(max_length_for(n, 4) // 2, max_length_for(n, 4) - 3) == n
    peer = ct2_subject(hf_dir, tok, "float32", threads=1)
    rows = peer.decode(mel, 100)
    assert [len(r) for r in rows] == [100, 100] and all(tok.eot not in r for r in rows)
    assert [len(r) for r in peer.decode(mel, 1)] == [1, 1]


@pytest.mark.parametrize("package", ["ctranslate2", "transformers"])
def test_missing_peer_package_is_a_clear_error(monkeypatch, hf_dir, tok, package):
    import builtins

    from voxserve.bench.peers import ct2, hf

    real_import = builtins.__import__

    def without(name, *args, **kwargs):
        if name == package:
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without)
    with pytest.raises(BenchError, match=f"pip install {package}"):
        if package == "ctranslate2":
            ct2.ct2_subject(hf_dir, tok, "int8", threads=1)
        else:
            hf.hf_subject(hf_dir, tok, CPU, "fp32")


def test_cli_writes_one_result_file(tmp_path, capsys, monkeypatch):
    from voxserve.bench import weights
    from voxserve.cli import main

    monkeypatch.setitem(weights.NAMED_DIMS, "tiny", TINY)  # the CLI's named dims, at test size
    out = tmp_path / "results"
    argv = ["bench", "--suite", "latency", "--dims", "tiny", "--device", "cpu", "--repeats", "1", "--threads", "1",
            "--cache", str(tmp_path / "cache"), "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    [path] = list(out.iterdir())
    doc = results.read_result(path)
    assert [s["name"] for s in doc["subjects"]] == ["voxserve-reference"]
    assert {(r["input_s"], r["tokens"]) for r in doc["figures"]["latency"]} == {(5.0, 20), (30.0, 100)}
    assert doc["settings"]["threads"] == 1 and doc["conditions"]["end"]
    assert all("cpu_contention_pct" in r for r in doc["figures"]["latency"])
    assert "voxserve-reference" in capsys.readouterr().out
    assert main([*argv, "--n-inputs", "0"]) == 1
    assert "--n-inputs must be >= 1" in capsys.readouterr().err


def test_cli_rounds_alternate_the_subjects_and_keep_every_round(tmp_path, capsys, monkeypatch):
    from voxserve.bench import runner, weights
    from voxserve.cli import main

    monkeypatch.setitem(weights.NAMED_DIMS, "tiny", TINY)
    loaded = []
    measure = runner._measure
    monkeypatch.setattr(runner, "_measure", lambda plan, subject, *a: loaded.append(subject.name) or measure(
        plan, subject, *a))  # fmt: skip
    out = tmp_path / "results"
    argv = ["bench", "--suite", "step", "--step-batches", "1", "--dims", "tiny", "--device", "cpu", "--repeats",
            "1", "--threads", "1", "--subject", "reference,engine", "--rounds", "2", "--cache",
            str(tmp_path / "cache"), "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert loaded == ["voxserve-reference", "voxserve-engine"] * 2
    doc = results.read_result(next(out.iterdir()))
    assert [s["name"] for s in doc["subjects"]] == ["voxserve-reference", "voxserve-engine"]
    assert sorted((r["subject"], r["round"]) for r in doc["figures"]["step"]) == [
        ("voxserve-engine", 0), ("voxserve-engine", 1), ("voxserve-reference", 0), ("voxserve-reference", 1)]  # fmt: skip
    assert "medians over 2 rounds" in capsys.readouterr().out
    assert main([*argv, "--rounds", "0"]) == 1
    assert "--rounds must be >= 1" in capsys.readouterr().err


def test_cli_isolate_measures_each_subject_in_a_fresh_process(tmp_path, capsys, monkeypatch):
    from voxserve.bench import runner, weights
    from voxserve.cli import main

    monkeypatch.setitem(weights.NAMED_DIMS, "tiny", TINY)  # resolved here, handed to the child

    def in_this_process(*args):
        raise AssertionError("measured in the parent process")

    monkeypatch.setattr(runner, "_measure_subject", in_this_process)  # the spawned child imports its own
    out = tmp_path / "results"
    argv = ["bench", "--suite", "step", "--step-batches", "1", "--dims", "tiny", "--device", "cpu", "--repeats",
            "1", "--threads", "1", "--isolate", "--cache", str(tmp_path / "cache"), "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    doc = results.read_result(next(out.iterdir()))
    assert [s["name"] for s in doc["subjects"]] == ["voxserve-reference"] and doc["settings"]["isolate"]
    [row] = doc["figures"]["step"]
    assert row["subject"] == "voxserve-reference" and row["step_ms"] > 0
    assert "in a fresh process" in capsys.readouterr().err


def _plan(tmp_path, **changes):
    from voxserve.bench.runner import BenchPlan

    base = dict(suite="all", dims="tiny", device="cpu", precision="fp32", peers=(), audio=SPEECH,
                tiktoken=TIKTOKEN, cache=tmp_path, out=tmp_path)  # fmt: skip
    return BenchPlan(**{**base, **changes})


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"suite": "fast"}, "--suite"),
        ({"dims": "huge"}, "--dims"),
        ({"batch": 0}, "--batch must be >= 1"),
        ({"step_batches": ()}, "--step-batches"),
        ({"peers": ("whisper.cpp",)}, "unknown peers"),
        ({"subjects": ("nope",)}, "--subject"),
        ({"suite": "peers"}, "measures nothing"),
    ],
)
def test_bench_plan_refuses_bad_settings(tmp_path, changes, message):
    with pytest.raises(BenchError, match=message):
        _plan(tmp_path, **changes)


def test_bench_plan_measurements(tmp_path):
    assert _plan(tmp_path).measurements == ("offline", "latency", "step")
    assert _plan(tmp_path, suite="step").measurements == ("step",)
    assert _plan(tmp_path, suite="peers", peers=("transformers",)).measurements == (
        "offline",
        "latency",
        "step",
    )
