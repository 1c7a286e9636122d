"""Engine builds on the CPU: build, load, warm-up, the manifest checked against the machine (a mismatch refused
with a clear message, or rebuilt), the model hash following the weights, the accuracy gate, and the command."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from tests.conftest import AUDIO, TINY
from tests.support import decisive_model, read_wav
from voxserve.api import load_model
from voxserve.build import (
    BuildError,
    BuildMismatchError,
    build_engine,
    load_build,
    load_engine,
    read_manifest,
    target,
)
from voxserve.cli import main
from voxserve.cli.build import PRECISION_CHOICES
from voxserve.decoding.batched import BatchDecoder
from voxserve.decoding.decode import WindowDecoder
from voxserve.decoding.options import DecodingOptions
from voxserve.model.load import hf_config, save_hf
from voxserve.model.qlinear import Fp8Linear, Int8WeightOnlyLinear, fuse_output_features
from voxserve.model.quant import (
    PRECISIONS,
    QuantizationError,
    get_handler,
    quantize_model,
    swap_linears,
    weights_hash,
)
from voxserve.quant.calibrate import audio_windows
from voxserve.quant.gate import AccuracyGateError
from voxserve.tokenizer import Tokenizer

HIFI = AUDIO / "hifitts-6097" / "audio"
FAST = {"max_windows": 2, "sample_len": 24, "language": "en"}  # two windows, short sequences: seconds


def write_model(directory: Path, tokenizer: Tokenizer, *, seed: int = 0) -> Path:
    # Decisive weights: next-token distributions that carry information, so the gate measures something.
    model = decisive_model(TINY, tokenizer, std=0.2, eot_boost=2.0, seed=seed)
    save_hf(model, directory, config=hf_config(TINY, eot=tokenizer.eot, sot=tokenizer.sot), generation={})
    tokenizer.save_hf(directory)
    return directory


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("build")


@pytest.fixture(scope="module")
def source(work: Path, tokenizer: Tokenizer) -> Path:
    return write_model(work / "model", tokenizer)


@pytest.fixture(scope="module")
def clips(shared) -> list:
    return [read_wav(f) for f in sorted(HIFI.glob("*.wav"))[:2]]


@pytest.fixture(scope="module")
def int8_build(work: Path, source: Path, clips):
    return build_engine(
        source, work / "int8", precision="int8", max_batch=4, audio=clips, device="cpu", **FAST
    )


@pytest.fixture(scope="module")
def fp32_build(work: Path, source: Path):
    return build_engine(source, work / "fp32", precision="fp32", max_batch=2, device="cpu")


def test_the_command_offers_every_precision():
    assert set(PRECISION_CHOICES) == set(PRECISIONS)


def test_manifest_records_machine_precision_buckets_hash_and_gate(int8_build, source):
    m = read_manifest(int8_build.directory)
    assert m == int8_build.manifest
    here = target("cpu")
    assert m["target"]["device"] == "cpu" and m["target"]["torch"] == torch.__version__
    assert m["target"] == here
    assert m["precision"] == "int8" and m["max_batch"] == 4 and m["batch_buckets"] == [1, 2, 4]
    assert m["model_hash"] == weights_hash(load_model(source, device="cpu").model)
    gate = m["gate"]
    assert gate["n_windows"] == 1 and gate["n_tokens"] > 0  # the odd window: not one the build fitted to
    assert 0 <= gate["mean_kl"] <= gate["max_mean_kl"] and gate["mean_kl"] == int8_build.gate.mean_kl
    assert 0 < gate["top1_agreement"] <= 1
    assert sorted(p.name for p in int8_build.directory.iterdir()) == [
        "engine.safetensors",
        "manifest.json",
        "tokenizer",
        "windows.safetensors",
    ]


def test_int8_weights_are_stored_quantized_and_load_as_built(int8_build, source):
    with safe_open(str(int8_build.directory / "engine.safetensors"), framework="pt") as f:
        assert f.get_tensor("decoder.layers.0.fc1.weight").dtype == torch.int8
        assert f.get_tensor("decoder.layers.0.fc1.scale").dtype == torch.float32
    loaded = load_build(int8_build.directory)
    assert isinstance(loaded.model.decoder.layers[0].fc1, Int8WeightOnlyLinear)
    # The same numbers as quantizing the checkpoint afresh.
    fresh = quantize_model(load_model(source, device="cpu").model, "int8")
    mel = torch.randn(1, TINY.n_mels, 3000, generator=torch.Generator().manual_seed(0))
    tokens = torch.tensor([[50258, 50259, 50359, 50363, 220]])
    with torch.no_grad():
        want = fresh.decoder.forward_full(tokens, fresh.encoder(mel))
        got = loaded.model.decoder.forward_full(tokens, loaded.model.encoder(mel))
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_fp32_engine_is_warmed_up_and_decodes_like_the_reference(fp32_build, source, clips):
    engine, loaded, manifest = load_engine(fp32_build.directory)
    try:
        assert manifest["batch_buckets"] == [1, 2]
        assert engine.runner.buckets == (1, 2)
        # on the CPU nothing is captured: one step of each kind and one encoder pass (on CUDA: every bucket)
        assert engine.warmed == [("step", 1), ("sample", 1), ("encoder 3000", 1)]
        mels = torch.stack(
            audio_windows(clips[0], TINY.n_mels)[:1] + audio_windows(clips[1], TINY.n_mels)[:1]
        )
        options = DecodingOptions(language="en", sample_len=32)
        got = BatchDecoder(engine, loaded.model, loaded.tokenizer).decode(mels, options)
    finally:
        engine.close()
    reference = load_model(source, device="cpu")
    want = WindowDecoder(reference.model, reference.tokenizer, options).decode(mels)
    assert [r.tokens for r in got] == [r.tokens for r in want]


def edit_target(directory: Path, **changes) -> None:
    path = directory / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["target"].update(changes)
    path.write_text(json.dumps(manifest))


def test_a_build_for_another_machine_is_refused_with_every_difference_named(int8_build, work):
    copy = work / "elsewhere"
    shutil.copytree(int8_build.directory, copy)
    edit_target(copy, torch="9.9.9", cpu_features=["amx_bf16"])
    with pytest.raises(BuildMismatchError) as info:
        load_build(copy)
    message = str(info.value)
    assert f"torch: built for '9.9.9', here '{torch.__version__}'" in message
    assert "cpu_features: built for ['amx_bf16']" in message and "rebuild" in message
    with pytest.raises(BuildMismatchError):
        load_model(copy)  # the public loader checks too
    with pytest.raises(BuildMismatchError, match="device: built for 'cuda'"):
        edit_target(copy, device="cuda", torch=torch.__version__)
        load_build(copy)


def test_cuda_build_refused_on_a_cpu_machine(int8_build, work):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    copy = work / "gpu-build"
    shutil.copytree(int8_build.directory, copy)
    edit_target(copy, device="cuda", name="NVIDIA H200", compute_capability="9.0", cuda="12.8")
    with pytest.raises(BuildMismatchError, match="no CUDA device is available"):
        load_build(copy)


def test_rebuild_makes_the_build_again_for_this_machine(int8_build, work):
    copy = work / "rebuilt"
    shutil.copytree(int8_build.directory, copy)
    edit_target(copy, torch="9.9.9")
    loaded = load_build(copy, rebuild=True)
    assert isinstance(loaded.model.decoder.layers[0].fc1, Int8WeightOnlyLinear)
    m = read_manifest(copy)
    assert m["target"] == target("cpu")
    assert m["model_hash"] == int8_build.manifest["model_hash"]
    # Built again from the stored windows: the same gate measurement, not a copy of the old manifest's.
    assert m["gate"]["mean_kl"] == pytest.approx(int8_build.manifest["gate"]["mean_kl"], rel=1e-6)
    assert m["created_utc"] >= int8_build.manifest["created_utc"]
    load_build(copy)  # and now it loads without rebuilding


def test_model_hash_changes_with_the_weights(work, tokenizer, fp32_build):
    other = write_model(work / "model-seed1", tokenizer, seed=1)
    built = build_engine(other, work / "fp32-seed1", precision="fp32", max_batch=2, device="cpu")
    assert built.manifest["model_hash"] != fp32_build.manifest["model_hash"]
    assert built.manifest["model_hash"] == weights_hash(load_model(other, device="cpu").model)


def test_damaged_weights_are_refused(fp32_build, work):
    copy = work / "damaged"
    shutil.copytree(fp32_build.directory, copy)
    data = bytearray((copy / "engine.safetensors").read_bytes())
    data[-100] ^= 0xFF
    (copy / "engine.safetensors").write_bytes(bytes(data))
    with pytest.raises(BuildError, match="differ from the manifest's hash"):
        load_build(copy)


def test_gate_failure_writes_nothing_and_reports_the_divergence(source, clips, work):
    out = work / "too-strict"
    with pytest.raises(AccuracyGateError, match="mean KL .* exceeds the limit 1e-12") as info:
        build_engine(source, out, precision="int8", max_batch=2, audio=clips, max_mean_kl=1e-12, **FAST)
    assert info.value.report.mean_kl > 1e-12
    assert not out.exists() and not out.with_name(out.name + ".partial").exists()


def test_refusals_before_any_work(source, work, fp32_build):
    with pytest.raises(QuantizationError, match="fp8 needs a CUDA GPU"):
        build_engine(source, work / "fp8", precision="fp8", max_batch=2, device="cpu")
    with pytest.raises(BuildError, match="needs representative audio"):
        build_engine(source, work / "int8-no-audio", precision="int8", max_batch=2, device="cpu")
    with pytest.raises(BuildError, match="not empty"):
        build_engine(source, fp32_build.directory, precision="fp32", max_batch=2, device="cpu")


def test_build_command(capsys, source, work, int8_build):
    out = work / "cli-int8"
    audio_dir = work / "audio"
    audio_dir.mkdir()
    for f in sorted(HIFI.glob("*.wav"))[:2]:
        shutil.copy(f, audio_dir)
    args = ["build", "--model", str(source), "--precision", "int8", "--max-batch", "4", "--out", str(out)]
    args += ["--audio-dir", str(audio_dir), "--limit", "2", "--sample-len", "24", "--language", "en"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "accuracy gate passed (limit 0.05): mean KL" in err and f"wrote {out}: int8 for CPU" in err
    assert read_manifest(out)["gate"]["mean_kl"] == pytest.approx(int8_build.manifest["gate"]["mean_kl"])
    # A second run into the same directory needs --force.
    assert main(args) == 1
    assert "not empty" in capsys.readouterr().err
    # transcribe takes the build as its model
    clip = sorted(HIFI.glob("*.wav"))[0]
    assert main(["transcribe", str(clip), "--model", str(out), "--temperature", "0", "--language", "en"]) == 0
    assert capsys.readouterr().out.strip()


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--precision", "int8", "--max-batch", "2"], "needs representative audio"),
        (["--precision", "fp32", "--max-batch", "0"], "--max-batch must be >= 1"),
        (["--precision", "fp8", "--max-batch", "2", "--device", "cpu", "--audio-dir", str(HIFI), "--limit", "1"],
         "fp8 needs a CUDA GPU"),
    ],
)  # fmt: skip
def test_build_command_refusals_exit_2_with_one_line(capsys, source, work, extra, words):
    code = main(["build", "--model", str(source), "--out", str(work / "refused"), *extra])
    err = capsys.readouterr().err
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------------- fused QKV


def quantized(precision: str, tokenizer: Tokenizer):
    model = decisive_model(TINY, tokenizer, std=0.2, eot_boost=2.0)
    if precision == "fp8":  # the fp8 math through torch's CPU _scaled_mm (no production path runs it)
        return swap_linears(model, get_handler("fp8"))
    return quantize_model(model, precision)


def cpu_scaled_mm() -> bool:
    try:
        a = torch.ones(16, 16).to(torch.float8_e4m3fn)
        torch._scaled_mm(a, a.t(), torch.ones(16, 1), torch.ones(1, 16), out_dtype=torch.float32)
        return True
    except (RuntimeError, NotImplementedError):
        return False


@pytest.mark.parametrize("precision", ["int8", "int8-dynamic", "fp8"])
def test_fused_quantized_qkv_gives_each_projection_its_own_output(precision, tokenizer):
    if precision == "fp8" and not cpu_scaled_mm():
        pytest.skip("this torch has no CPU _scaled_mm")
    attn = quantized(precision, tokenizer).decoder.layers[1].attn
    parts = (attn.query, attn.key, attn.value)
    x = torch.randn(3, TINY.n_text_state, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        separate = [m(x) for m in parts]
        fused = fuse_output_features(parts)
        assert fused is not None and fused.out_features == 3 * TINY.n_text_state
        joint = fused(x).chunk(3, dim=-1)
        after = [m(x) for m in parts]  # the parts now read views of the fused weight
    for a, b, c in zip(separate, joint, after, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(c, a, rtol=0, atol=0)
    assert all(
        m.weight.untyped_storage().data_ptr() == fused.weight.untyped_storage().data_ptr() for m in parts
    )


def test_fp8_projections_with_different_static_scales_stay_separate(tokenizer):
    model = decisive_model(TINY, tokenizer, std=0.2, eot_boost=2.0)
    attn = model.decoder.layers[0].attn
    linears = (attn.query, attn.key, attn.value)
    parts = [Fp8Linear(m, input_scale=s) for m, s in zip(linears, (1.0, 1.0, 2.0), strict=True)]
    assert fuse_output_features(parts) is None
    assert fuse_output_features([Int8WeightOnlyLinear(attn.query), Fp8Linear(attn.key)]) is None
    assert fuse_output_features([attn.query, Fp8Linear(attn.key)]) is None


def test_float_projections_fuse_into_one_linear(tokenizer):
    """Float Linears (the encoder's query, key and value in fp16) fuse into one Linear whose output is the
    parts' side by side, a missing bias (the key's) zeros, the parts' weights views of the fused one."""
    model = decisive_model(TINY, tokenizer, std=0.2, eot_boost=2.0)
    attn = model.encoder.layers[0].attn
    parts = (attn.query, attn.key, attn.value)
    x = torch.randn(2, 5, attn.query.in_features)
    want = torch.cat([m(x) for m in parts], dim=-1)
    fused = fuse_output_features(parts)
    assert type(fused) is torch.nn.Linear and fused.bias is not None
    torch.testing.assert_close(fused(x), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat([m(x) for m in parts], dim=-1), want, rtol=0, atol=0)
    assert all(
        m.weight.untyped_storage().data_ptr() == fused.weight.untyped_storage().data_ptr() for m in parts
    )
    again = fuse_output_features(parts)  # a second engine on the same model: the same weights, no new copy
    assert again.weight.untyped_storage().data_ptr() == fused.weight.untyped_storage().data_ptr()
    torch.testing.assert_close(again(x), fused(x), rtol=0, atol=0)
    assert fuse_output_features((attn.query, model.encoder.layers[0].fc2)) is None  # another input width


def _assert_engine_decodes_like_reference(engine, loaded, clips, sample_len: int) -> None:
    """The engine of a loaded build and the loaded model's reference path give the same tokens on the clips'
    first windows."""
    mels = torch.stack([audio_windows(c, TINY.n_mels)[0] for c in clips])
    options = DecodingOptions(language="en", sample_len=sample_len)
    got = BatchDecoder(engine, loaded.model, loaded.tokenizer).decode(mels, options)
    want = WindowDecoder(loaded.model, loaded.tokenizer, options).decode(mels)
    assert [r.tokens for r in got] == [r.tokens for r in want]


def test_int8_engine_with_fused_qkv_decodes_like_the_int8_reference(int8_build, clips):
    engine, loaded, _ = load_engine(int8_build.directory)
    try:
        assert all(m is not None for m in engine.runner._qkv_quant)
        _assert_engine_decodes_like_reference(engine, loaded, clips, sample_len=32)
    finally:
        engine.close()


def test_fp8_build_with_static_scales_loads_as_built(monkeypatch, source, clips, work):
    """The fp8 path end to end on the CPU, through torch's CPU _scaled_mm with the device check lifted (on a GPU
    this is the real thing): calibrated static scales stored and loaded into Fp8Linears, and an engine whose
    fused fp8 QKV decodes like the loaded model's reference path."""
    if not cpu_scaled_mm():
        pytest.skip("this torch has no CPU _scaled_mm")
    from voxserve.model import quant

    monkeypatch.setattr(quant.Fp8Handler, "check", lambda self, model: None)
    built = build_engine(
        source, work / "fp8", precision="fp8", max_batch=2, audio=clips, device="cpu", **FAST
    )
    assert built.manifest["static_activation_scales"] and (built.directory / "calibration.json").is_file()
    with safe_open(str(built.directory / "engine.safetensors"), framework="pt") as f:
        assert f.get_tensor("decoder.layers.0.attn.query.weight").dtype == torch.float8_e4m3fn
        assert f.get_tensor("decoder.layers.0.attn.query.input_scale").shape == (1, 1)
    engine, loaded, _ = load_engine(built.directory)
    try:
        layer = loaded.model.decoder.layers[0]
        assert isinstance(layer.fc1, Fp8Linear) and layer.fc1.input_scale is not None
        assert all(m is not None for m in engine.runner._qkv_quant)
        _assert_engine_decodes_like_reference(engine, loaded, clips, sample_len=16)
    finally:
        engine.close()
