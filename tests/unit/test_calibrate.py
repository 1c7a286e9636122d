"""Calibration statistics: right values on inputs computed independently, save/load, windows, reference token
sequences and the ``voxserve calibrate`` command."""

from __future__ import annotations

import json
import math
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.conftest import AUDIO, TINY
from voxserve.config import N_FRAMES, N_SAMPLES
from voxserve.decoding.decode import decode_windows
from voxserve.decoding.options import DecodingOptions
from voxserve.model.load import init_random
from voxserve.model.quant import CalibrationError, CalibrationStats, quantizable_linears, weights_hash
from voxserve.quant.calibrate import audio_windows, collect_activation_stats, reference_token_sequences
from voxserve.tokenizer import Tokenizer

HIFI = AUDIO / "hifitts-6097" / "audio"


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        assert w.getsampwidth() == 2 and w.getframerate() == 16000 and w.getnchannels() == 1
        return np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768


@pytest.fixture(scope="module")
def model():
    return init_random(TINY, seed=3)


@pytest.fixture(scope="module")
def tokenizer(multilingual_tiktoken: Path) -> Tokenizer:
    return Tokenizer.from_tiktoken(multilingual_tiktoken)


@pytest.fixture(scope="module")
def mels(shared) -> list[torch.Tensor]:
    files = sorted(HIFI.glob("*.wav"))[:2]
    return [audio_windows(read_wav(f), TINY.n_mels)[0] for f in files]


def _expected(model, mels, seqs, quantile):
    """The same statistics computed by hand for a few Linears, from the model's pieces, without hooks."""
    enc, dec = model.encoder, model.decoder
    seen: dict[str, list[torch.Tensor]] = {}
    with torch.inference_mode():
        for mel, seq in zip(mels, seqs, strict=True):
            x = F.gelu(enc.conv1(mel[None]))
            x = F.gelu(enc.conv2(x)).transpose(1, 2) + enc.positional_embedding
            layer = enc.layers[0]
            seen.setdefault("encoder.layers.0.attn.query", []).append(layer.attn_ln(x))
            x = x + layer.attn.attend(
                *(p(layer.attn_ln(x)) for p in (layer.attn.query, layer.attn.key, layer.attn.value)), None
            )
            seen.setdefault("encoder.layers.0.fc2", []).append(F.gelu(layer.fc1(layer.mlp_ln(x))))
            features = enc(mel[None])
            seen.setdefault("decoder.layers.1.cross_attn.value", []).append(features)
            t = torch.tensor([seq])
            y = dec.token_embedding(t) + dec.positional_embedding[: t.shape[1]]
            seen.setdefault("decoder.layers.0.attn.key", []).append(dec.layers[0].attn_ln(y))
    out = {}
    for name, xs in seen.items():
        amax = max(float(x.abs().max()) for x in xs)
        per_pass = [x.abs().reshape(-1) for x in xs]
        q = max(float(a.kthvalue(math.ceil(quantile * a.numel())).values) for a in per_pass)
        out[name] = (amax, q)
    return out


def test_stats_match_inputs_computed_by_hand(model, mels, tokenizer):
    seqs = [list(tokenizer.sot_sequence) + [220, 1000 + i, 2000, tokenizer.eot] for i in range(len(mels))]
    stats = collect_activation_stats(model, mels, seqs, quantile=0.99, meta={"source": "test"})
    assert set(stats.layers) == {n for n, _ in quantizable_linears(model)}
    assert stats.n_windows == 2 and stats.n_tokens == sum(len(s) for s in seqs)
    assert stats.model_hash == weights_hash(model) and stats.meta == {"source": "test"}
    for name, (amax, q) in _expected(model, mels, seqs, 0.99).items():
        assert stats.layers[name].amax == pytest.approx(amax, rel=1e-5), name
        assert stats.layers[name].quantile == pytest.approx(q, rel=1e-5), name
        assert 0 < stats.layers[name].quantile < stats.layers[name].amax
    # Different layers see different ranges: the hooks are not sharing one recorder.
    assert len({round(s.amax, 6) for s in stats.layers.values()}) > len(stats.layers) // 2


def test_stats_errors(model, mels, tokenizer):
    seq = list(tokenizer.sot_sequence)
    with pytest.raises(ValueError, match="differ in length"):
        collect_activation_stats(model, mels, [seq])
    with pytest.raises(ValueError, match="no calibration windows"):
        collect_activation_stats(model, [], [])
    with pytest.raises(ValueError, match="token sequences must hold"):
        collect_activation_stats(model, mels[:1], [[1] * (TINY.n_text_ctx + 1)])
    with pytest.raises(ValueError, match="each window must be"):
        collect_activation_stats(model, [mels[0][:40]], [seq])
    with pytest.raises(ValueError, match="quantile"):
        collect_activation_stats(model, mels, [seq, seq], quantile=1.5)
    assert not any(m._forward_pre_hooks for _, m in quantizable_linears(model))  # hooks removed after errors


def test_save_load_round_trip_and_bad_files(model, mels, tokenizer, tmp_path):
    seqs = [list(tokenizer.sot_sequence)] * len(mels)
    stats = collect_activation_stats(model, mels, seqs, meta={"model": "random"})
    path = stats.save(tmp_path / "sub" / "cal.json")
    assert CalibrationStats.load(path) == stats
    name = "decoder.layers.0.fc1"
    assert stats.input_scale(name, 2.0) == pytest.approx(2.0 * stats.layers[name].amax / 448)
    with pytest.raises(CalibrationError, match="no entry"):
        stats.input_scale("decoder.layers.9.fc1")
    with pytest.raises(CalibrationError, match="no calibration file"):
        CalibrationStats.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CalibrationError, match="unreadable"):
        CalibrationStats.load(tmp_path / "bad.json")
    data = json.loads(path.read_text())
    (tmp_path / "old.json").write_text(json.dumps({**data, "version": 0}))
    with pytest.raises(CalibrationError, match="version-1"):
        CalibrationStats.load(tmp_path / "old.json")
    del data["layers"][name]["amax"]
    (tmp_path / "broken.json").write_text(json.dumps(data))
    with pytest.raises(CalibrationError, match="malformed"):
        CalibrationStats.load(tmp_path / "broken.json")


def test_audio_windows_cover_the_audio():
    samples = np.random.default_rng(0).standard_normal(N_SAMPLES + N_SAMPLES // 2).astype(np.float32) * 0.1
    windows = audio_windows(samples, 80)
    assert [tuple(w.shape) for w in windows] == [(80, N_FRAMES)] * 2
    assert len(audio_windows(samples[:16000], 80)) == 1
    with pytest.raises(ValueError, match="non-empty"):
        audio_windows(np.zeros(0, np.float32), 80)


def test_reference_sequences_are_the_greedy_decodes(model, mels, tokenizer):
    seqs = reference_token_sequences(model, tokenizer, mels, language="en", batch_size=1, sample_len=12)
    results = decode_windows(
        model, tokenizer, torch.stack(mels), DecodingOptions(language="en", sample_len=12)
    )
    tok = tokenizer.with_options(language="en", task="transcribe")
    for seq, result in zip(seqs, results, strict=True):
        prompt = list(tok.sot_sequence)
        assert seq[: len(prompt)] == prompt
        tail = [tokenizer.eot] if result.finish_reason == "stop" else []
        assert seq[len(prompt) :] == list(result.tokens) + tail


# ------------------------------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer) -> Path:
    from voxserve.bench.weights import generation_config
    from voxserve.model.load import hf_config, save_hf

    out = tmp_path_factory.mktemp("model")
    save_hf(model_from := init_random(TINY, seed=3), out, config=hf_config(TINY, eot=tokenizer.eot, sot=tokenizer.sot),
            generation=generation_config(tokenizer, TINY))  # fmt: skip
    tokenizer.save_hf(out)
    assert weights_hash(model_from)
    return out


def test_calibrate_command_writes_stats_for_the_model(model_dir, model, tmp_path, capsys):
    pytest.importorskip("voxserve.audio.io")
    from voxserve.cli import main

    files = sorted(HIFI.glob("*.wav"))[:3]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"audio_filepath": str(f), "text": "x"}) + "\n" for f in files))
    out = tmp_path / "cal.json"
    argv = [
        "calibrate",
        "--model",
        str(model_dir),
        "--manifest",
        str(manifest),
        "--limit",
        "2",
        "--out",
        str(out),
    ]
    assert main([*argv, "--language", "en", "--device", "cpu", "--sample-len", "8", "--quiet"]) == 0
    stats = CalibrationStats.load(out)
    assert stats.n_windows == 2 and stats.model_hash == weights_hash(model)
    assert "wrote" in capsys.readouterr().err


def test_calibrate_command_errors(model_dir, tmp_path, capsys):
    from voxserve.cli import main

    base = ["calibrate", "--model", str(model_dir), "--out", str(tmp_path / "c.json"), "--quiet"]
    assert main([*base, "--audio-dir", str(tmp_path)]) == 1
    assert "no audio files" in capsys.readouterr().err
    assert main([*base, "--manifest", str(tmp_path / "nope.jsonl")]) == 1
    assert "no manifest" in capsys.readouterr().err
    (tmp_path / "m.jsonl").write_text('{"text": "no path"}\n')
    assert main([*base, "--manifest", str(tmp_path / "m.jsonl")]) == 1
    assert "m.jsonl:1: no audio_filepath" in capsys.readouterr().err
    assert main([*base, "--audio-dir", str(tmp_path), "--limit", "0"]) == 1
    assert "--limit must be >= 1" in capsys.readouterr().err
