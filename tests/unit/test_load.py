"""Checkpoint loading: clear ``ModelLoadError``s for every kind of bad input, hub ids without a network, and
loading by memory map (no second copy of the weights)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.conftest import ROOT, TINY
from voxserve.model.load import (
    ModelLoadError,
    hf_config,
    init_random,
    load_checkpoint,
    save_hf,
    save_openai,
)

EOT, SOT = 50257, 50258


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Many small CPU ops: where other processes share the CPU, OpenMP's barriers between them cost more than
    the ops themselves, so these tests run on one thread."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def model():
    return init_random(TINY, seed=2)


@pytest.fixture(scope="module")
def hf_dir(model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ckpt") / "good"
    return save_hf(model, out, config=hf_config(TINY, eot=EOT, sot=SOT), generation={"is_multilingual": True})


@pytest.fixture(scope="module")
def pt_file(model, tmp_path_factory) -> Path:
    return save_openai(model, tmp_path_factory.mktemp("pt") / "model.pt")


def copy_dir(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def expect_error(source, *fragments: str) -> str:
    with pytest.raises(ModelLoadError) as err:
        load_checkpoint(source)
    msg = str(err.value)
    for fragment in fragments:
        assert fragment in msg, msg
    return msg


def test_good_checkpoints_load(hf_dir, pt_file, model) -> None:
    for source in (hf_dir, pt_file, str(pt_file)):
        loaded, info = load_checkpoint(source)
        assert loaded.dims == TINY
        assert not loaded.training
        assert all(not p.is_meta for p in loaded.parameters())
        assert torch.equal(loaded.decoder.token_embedding.weight, model.decoder.token_embedding.weight)
        assert info.source == str(source)


# --------------------------------------------------------------------------------------------- errors


def test_missing_path(tmp_path) -> None:
    expect_error(tmp_path / "nowhere", "not found", "nowhere")


def test_directory_without_config(tmp_path) -> None:
    expect_error(tmp_path, "no config.json")


def test_config_of_another_model(hf_dir, tmp_path) -> None:
    d = copy_dir(hf_dir, tmp_path / "bert")
    (d / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": 30522}))
    expect_error(d, "'bert'", "not Whisper")


def test_config_missing_whisper_fields(hf_dir, tmp_path) -> None:
    d = copy_dir(hf_dir, tmp_path / "partial")
    cfg = json.loads((d / "config.json").read_text())
    del cfg["num_mel_bins"]
    (d / "config.json").write_text(json.dumps(cfg))
    expect_error(d, "num_mel_bins")


def test_config_that_is_not_json(hf_dir, tmp_path) -> None:
    d = copy_dir(hf_dir, tmp_path / "badjson")
    (d / "config.json").write_text("{not json")
    expect_error(d, "config.json", "JSON")


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"scale_embedding": True}, "scale_embedding"),
        ({"activation_function": "relu"}, "activation_function"),
        ({"tie_word_embeddings": False}, "tie_word_embeddings"),
        ({"vocab_size": 1000}, "vocab"),
    ],
)
def test_unsupported_config_values(hf_dir, tmp_path, change, fragment) -> None:
    d = copy_dir(hf_dir, tmp_path / "variant")
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, **change}))
    expect_error(d, fragment)


@pytest.mark.parametrize(
    ("generation", "fragment"),
    [
        ({"alignment_heads": [[1, 5]]}, "outside"),
        ({"alignment_heads": [1, 2]}, "alignment_heads"),
        ({"suppress_tokens": "none"}, "suppress"),
        ([1, 2], "JSON object"),
    ],
    ids=["head-out-of-range", "heads-not-pairs", "suppress-not-ids", "not-an-object"],
)
def test_malformed_generation_config(hf_dir, tmp_path, generation, fragment) -> None:
    d = copy_dir(hf_dir, tmp_path / "gen")
    (d / "generation_config.json").write_text(json.dumps(generation))
    expect_error(d, fragment)


def test_no_weight_file(hf_dir, tmp_path) -> None:
    d = copy_dir(hf_dir, tmp_path / "noweights")
    (d / "model.safetensors").unlink()
    expect_error(d, "no model.safetensors")


def test_missing_and_unexpected_weights(hf_dir, tmp_path) -> None:
    d = copy_dir(hf_dir, tmp_path / "missing")
    state = load_file(d / "model.safetensors")
    del state["model.decoder.layers.1.fc2.bias"]
    state["model.decoder.extra.weight"] = torch.zeros(2)
    save_file(state, d / "model.safetensors")
    expect_error(d, "decoder.layers.1.fc2.bias", "decoder.extra.weight")


def test_misshaped_weight(hf_dir, tmp_path) -> None:
    d = copy_dir(hf_dir, tmp_path / "shape")
    state = load_file(d / "model.safetensors")
    state["model.encoder.conv1.weight"] = torch.zeros(64, 80, 5)
    save_file(state, d / "model.safetensors")
    expect_error(d, "encoder.conv1.weight", "(64, 80, 5)", "(64, 80, 3)")


def test_integer_weight(hf_dir, tmp_path) -> None:
    d = copy_dir(hf_dir, tmp_path / "int")
    state = load_file(d / "model.safetensors")
    state["model.decoder.layer_norm.bias"] = torch.zeros(64, dtype=torch.int32)
    save_file(state, d / "model.safetensors")
    expect_error(d, "decoder.ln.bias", "floating-point")


def test_untied_output_projection(hf_dir, tmp_path) -> None:
    d = copy_dir(hf_dir, tmp_path / "untied")
    state = load_file(d / "model.safetensors")
    state["proj_out.weight"] = state["model.decoder.embed_tokens.weight"] + 1
    save_file(state, d / "model.safetensors")
    expect_error(d, "proj_out.weight", "untied")
    # An equal copy (what files written without de-duplication hold) is fine.
    state["proj_out.weight"] = state["model.decoder.embed_tokens.weight"].clone()
    save_file(state, d / "model.safetensors")
    load_checkpoint(d)


@pytest.mark.parametrize("keep", [0.5, 0.0001], ids=["truncated", "header-only"])
def test_corrupt_safetensors(hf_dir, tmp_path, keep) -> None:
    d = copy_dir(hf_dir, tmp_path / "corrupt")
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: max(3, int(len(data) * keep))])
    expect_error(d, "model.safetensors", "unreadable")


def test_pytorch_model_bin_directory(model, hf_dir, tmp_path) -> None:
    d = copy_dir(hf_dir, tmp_path / "bin")
    state = load_file(d / "model.safetensors")
    (d / "model.safetensors").unlink()
    torch.save(state, d / "pytorch_model.bin")
    loaded, _ = load_checkpoint(d)
    assert torch.equal(loaded.encoder.conv2.weight, model.encoder.conv2.weight)
    (d / "pytorch_model.bin").write_bytes(b"not a pickle at all")
    expect_error(d, "pytorch_model.bin", "unreadable")


def test_sharded_index_problems(model, tmp_path) -> None:
    pytest.importorskip("transformers")
    from transformers import WhisperForConditionalGeneration

    src = save_hf(model, tmp_path / "src", config=hf_config(TINY, eot=EOT, sot=SOT), generation={})
    hf = WhisperForConditionalGeneration.from_pretrained(src)
    d = tmp_path / "sharded"
    hf.save_pretrained(d, max_shard_size="1MB")
    loaded, _ = load_checkpoint(d)
    assert torch.equal(loaded.decoder.positional_embedding, model.decoder.positional_embedding)
    shards = sorted(d.glob("model-*.safetensors"))
    assert len(shards) > 1
    shards[-1].unlink()
    expect_error(d, "missing", shards[-1].name)
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}}))
    expect_error(d, "weight_map")


def test_pt_that_is_not_a_whisper_checkpoint(tmp_path) -> None:
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "other.pt")
    expect_error(tmp_path / "other.pt", "not an openai-whisper checkpoint")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    expect_error(tmp_path / "list.pt", "not an openai-whisper checkpoint")


def test_corrupt_pt(pt_file, tmp_path) -> None:
    data = pt_file.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    expect_error(tmp_path / "cut.pt", "not a readable PyTorch checkpoint")
    (tmp_path / "junk.pt").write_bytes(b"\x00junk" * 50)
    expect_error(tmp_path / "junk.pt", "not a readable PyTorch checkpoint")


def test_pt_with_bad_dims_or_weights(pt_file, tmp_path) -> None:
    ckpt = torch.load(pt_file, weights_only=True)
    bad = {**ckpt, "dims": {**ckpt["dims"], "n_vocab": 1000}}
    torch.save(bad, tmp_path / "vocab.pt")
    expect_error(tmp_path / "vocab.pt", "n_vocab=1000")
    dims = dict(ckpt["dims"])
    del dims["n_text_layer"]
    torch.save({**ckpt, "dims": dims}, tmp_path / "dims.pt")
    expect_error(tmp_path / "dims.pt", "n_text_layer")
    state = dict(ckpt["model_state_dict"])
    del state["decoder.blocks.0.cross_attn.key.weight"]
    torch.save({**ckpt, "model_state_dict": state}, tmp_path / "weights.pt")
    expect_error(tmp_path / "weights.pt", "decoder.layers.0.cross_attn.key.weight")


def test_legacy_pt_format_still_loads(model, pt_file, tmp_path) -> None:
    """Files from torch's pre-zip serializer cannot be memory-mapped; they load with a copy instead."""
    ckpt = torch.load(pt_file, weights_only=True)
    torch.save(ckpt, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    loaded, _ = load_checkpoint(tmp_path / "legacy.pt")
    assert torch.equal(loaded.decoder.ln.weight, model.decoder.ln.weight)


def test_file_of_another_kind(tmp_path, hf_dir) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    expect_error(tmp_path / "notes.txt", "not a model")
    expect_error(hf_dir / "model.safetensors", "not a model", "directory")


def test_bad_dtype_is_a_value_error(pt_file) -> None:
    with pytest.raises(ValueError, match="dtype"):
        load_checkpoint(pt_file, dtype="float8")


# ------------------------------------------------------------------------------ hub ids, no network

_HUB_SCRIPT = textwrap.dedent(
    """
    import socket, sys

    def no_network(*args, **kwargs):
        raise AssertionError("the loader tried to open a network connection")

    socket.socket.connect = no_network
    socket.create_connection = no_network
    from voxserve.model.load import ModelLoadError, load_checkpoint

    try:
        load_checkpoint("openai/whisper-tiny")
    except ModelLoadError as e:
        print("ERROR:", e)
    model, info = load_checkpoint("someone/whisper-cached")
    print("CACHED:", model.dims.n_text_layer, info.format, info.source)

    # Online mode with an unreachable network: connection attempts fail as they would without a route.
    import huggingface_hub.constants

    huggingface_hub.constants.HF_HUB_OFFLINE = False
    attempts = []

    def unreachable(*args, **kwargs):
        attempts.append(args)
        raise OSError(101, "Network is unreachable")

    socket.socket.connect = unreachable
    socket.create_connection = unreachable
    try:
        load_checkpoint("openai/whisper-base")
    except ModelLoadError as e:
        print("UNREACHABLE:", e)
    print("ATTEMPTS:", len(attempts))
    """
)


def test_hub_id_offline_gives_clear_error_and_uses_cache(hf_dir, tmp_path) -> None:
    """A fresh process (huggingface_hub reads HF_HUB_OFFLINE and HF_HOME at import) with sockets disabled:
    an uncached hub id fails with a message telling the user to pass a local path, and a cached one loads;
    then online mode with an unreachable network gives the same clear message."""
    home = tmp_path / "hf-home"
    repo = home / "hub" / "models--someone--whisper-cached"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(hf_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(home),
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
    }
    env.pop("HF_HUB_CACHE", None)
    env.pop("HUGGINGFACE_HUB_CACHE", None)
    proc = subprocess.run(
        [sys.executable, "-c", _HUB_SCRIPT], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = dict(line.split(": ", 1) for line in proc.stdout.splitlines() if ": " in line)
    assert "openai/whisper-tiny" in lines["ERROR"]
    assert "pass a local path" in lines["ERROR"]
    assert lines["CACHED"] == f"{TINY.n_text_layer} hf someone/whisper-cached"
    assert "openai/whisper-base" in lines["UNREACHABLE"] and "pass a local path" in lines["UNREACHABLE"]
    assert int(lines["ATTEMPTS"]) > 0  # that phase really went for the network (and was refused)


# ---------------------------------------------------------------------------- memory-mapped loading

_MEMORY_SCRIPT = textwrap.dedent(
    """
    import gc, json, sys
    from voxserve.model.load import load_checkpoint

    def rss():
        fields = {}
        for line in open("/proc/self/status"):
            key, value = line.split(":", 1)
            if key in ("VmRSS", "RssAnon", "RssFile"):
                fields[key] = int(value.split()[0]) * 1024
        return fields

    # Warm-up on small checkpoints of both formats: lazy imports and one-time allocator growth are not weights.
    load_checkpoint(sys.argv[1])
    load_checkpoint(sys.argv[2])
    for path in sys.argv[3:]:
        gc.collect()
        before = rss()
        model, info = load_checkpoint(path)
        after = rss()
        total = sum(p.sum().item() for p in model.parameters())  # touch every weight: its pages are mapped in
        touched = rss()
        nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
        print(json.dumps({"format": info.format, "nbytes": nbytes, "checksum": total,
                          "load": {k: after[k] - before[k] for k in before},
                          "touched": {k: touched[k] - before[k] for k in before}}))
        del model, info
    """
)


@pytest.mark.slow
def test_loading_maps_weights_instead_of_copying(tmp_path, hf_dir, pt_file) -> None:
    """A ~190 MB checkpoint in each format: loading adds almost no anonymous (copied) memory; touching every
    weight maps the file's pages in (file-backed RSS), still without an anonymous copy."""
    dims = TINY.__class__(**{**TINY.to_dict(), "n_audio_state": 512, "n_text_state": 512, "n_audio_head": 8,
                             "n_text_head": 8, "n_audio_layer": 3, "n_text_layer": 3})  # fmt: skip
    big = init_random(dims, seed=0)
    big_hf = save_hf(big, tmp_path / "big", config=hf_config(dims, eot=EOT, sot=SOT), generation={})
    big_pt = save_openai(big, tmp_path / "big.pt")
    del big
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, str(hf_dir), str(pt_file), str(big_hf), str(big_pt)],
        env=env, capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    reports = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [r["format"] for r in reports] == ["hf", "openai"]
    assert reports[0]["checksum"] == reports[1]["checksum"]
    for report in reports:
        size = report["nbytes"]
        assert size > 150e6
        # No copy: anonymous memory grows by well under a tenth of the weights, however much is then read.
        assert report["load"]["RssAnon"] < 0.1 * size, report
        assert report["touched"]["RssAnon"] < 0.1 * size, report
        # Total growth stays far under the 2x that a read-then-convert loader would need.
        assert report["touched"]["VmRSS"] < 1.25 * size, report
        print(f"\n{report['format']}: weights {size / 2**20:.0f} MiB; " + json.dumps(report))
