"""large-v3 dimensions on CUDA: encoder output, logits (cache-free and KV cache) and cross-attention scores equal
openai-whisper's and transformers' on the same random weights, in float32 with TF32 off; float16 stays within a
stated bound of the float32 references; the log-mel on CUDA equals the CPU's.

Self-contained on purpose (no fixtures from the conftests, reference packages imported per test, no PyAV): the
GPU machine may lack some of them. One model lives on the GPU at a time: voxserve's outputs are taken first,
its weights kept on the host, then each reference is built on the GPU from those weights, run and freed.

The same procedure also runs on the CPU at tiny dimensions (``test_procedure_on_cpu``), so the GPU code path is
exercised by every CI run even where no GPU exists.
"""

from __future__ import annotations

import dataclasses
import gc
import importlib.util
import wave
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from tests.conftest import AUDIO, LARGE_V3, TINY
from voxserve.audio.features import log_mel_spectrogram, pad_or_trim
from voxserve.config import N_SAMPLES, ModelDims
from voxserve.model.load import _NATIVE_TO_HF, _NATIVE_TO_OPENAI, _rename, hf_config
from voxserve.model.whisper import Whisper

FP32_REL = 1e-4
# float16 against the float32 references: 10-bit mantissas through 32 + 32 layers. On the CPU at large-v3's
# width the error measured 1.1e-3 (4 + 4 layers) and 1.3e-3 (8 + 8 layers), growing slowly with depth; the
# measured errors are printed (-s) so the bound can be tightened from real runs.
FP16_REL = 1e-2

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
SOT, EOT = 50258, 50257


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Many small CPU ops: where other processes share the CPU, OpenMP's barriers between them cost more than
    the ops themselves, so these tests run on one thread."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return ((a - b).norm() / b.norm()).item()


def read_wav(name: str) -> np.ndarray:
    with wave.open(str(AUDIO / "samples" / name)) as w:
        assert (w.getsampwidth(), w.getframerate(), w.getnchannels()) == (2, 16000, 1)
        return np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@pytest.fixture(scope="module")
def no_tf32() -> Iterator[None]:
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# ----------------------------------------------------------------------------------------------- procedure


def inputs(dims: ModelDims, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Two 30 s windows (speech, noise) as log-mels [2, n_mels, 3000], and a 16-token prompt + text [2, 16]."""
    speech = read_wav("jfk.wav")
    noise = np.random.default_rng(0).standard_normal(16000 * 8).astype(np.float32) * 0.05
    mel = torch.stack(
        [pad_or_trim(log_mel_spectrogram(x, dims.n_mels, device=device)) for x in (speech, noise)]
    )
    g = torch.Generator().manual_seed(1)
    shift = dims.num_languages - 99  # task and no-timestamps ids move with the number of languages
    prefix = torch.tensor([[SOT, SOT + 1, 50359 + shift, 50363 + shift]] * 2)
    tokens = torch.cat([prefix, torch.randint(0, 50257, (2, 12), generator=g)], dim=1)
    return mel, tokens.to(device)


def random_model(dims: ModelDims, device: torch.device, seed: int = 0, std: float = 0.02) -> Whisper:
    """Seeded normal weights generated on ``device`` itself (a host-side init of large-v3 takes minutes)."""
    with torch.device(device):
        model = Whisper(dims)
    g = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()
            else:
                for p in module.parameters(recurse=False):
                    p.normal_(0.0, std, generator=g)
    return model.eval()


@torch.no_grad()
def run_ours(
    model: Whisper, mel: torch.Tensor, tokens: torch.Tensor, *, scores: bool
) -> dict[str, torch.Tensor]:
    audio = model.encoder(mel)
    out = {"audio": audio, "full": model.decoder.forward_full(tokens, audio)}
    cache = model.new_cache(tokens.shape[0])
    cache.cross_k[:], cache.cross_v[:] = model.decoder.cross_kv(audio)
    b, n = tokens.shape[0], 4
    steps = [model.decoder(tokens[:, :n], torch.arange(n, device=mel.device).expand(b, n), cache, n)]
    for t in range(n, tokens.shape[1]):
        pos = torch.full((b, 1), t, device=mel.device)
        steps.append(model.decoder(tokens[:, t : t + 1], pos, cache, t + 1))
    out["kv"] = torch.cat(steps, dim=1)
    if scores:
        out["scores"] = torch.stack(model.decoder.cross_attention_scores(tokens, audio)[1])
    return {k: v.float().cpu() for k, v in out.items()}


def host_state(model: Whisper) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().cpu() for k, v in model.state_dict().items()}


def installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


@torch.no_grad()
def run_openai(
    state: dict, dims: ModelDims, mel: torch.Tensor, tokens: torch.Tensor
) -> dict[str, torch.Tensor]:
    import whisper

    with torch.device(mel.device):
        ref = whisper.model.Whisper(whisper.model.ModelDimensions(**dims.to_openai()))
    ref.load_state_dict({_rename(k, _NATIVE_TO_OPENAI): v for k, v in state.items()})
    ref.eval()
    recorded: list[torch.Tensor] = []
    hooks = [
        block.cross_attn.register_forward_hook(lambda _m, _i, out: recorded.append(out[-1]))
        for block in ref.decoder.blocks
    ]
    try:
        audio = ref.encoder(mel)
        with whisper.model.disable_sdpa():  # the qk scores are only recorded on whisper's explicit path
            logits = ref.decoder(tokens, audio)
    finally:
        for h in hooks:
            h.remove()
    out = {"audio": audio.cpu(), "full": logits.float().cpu(), "scores": torch.stack(recorded).float().cpu()}
    del ref
    free(mel.device)
    return out


@torch.no_grad()
def run_hf(state: dict, dims: ModelDims, mel: torch.Tensor, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    import transformers

    config = transformers.WhisperConfig.from_dict(hf_config(dims, eot=EOT, sot=SOT))
    with torch.device(mel.device):
        ref = transformers.WhisperForConditionalGeneration(config)
    hf_state = {_rename(k, _NATIVE_TO_HF): v for k, v in state.items()}
    hf_state["proj_out.weight"] = hf_state["model.decoder.embed_tokens.weight"]  # tied
    missing, unexpected = ref.load_state_dict(hf_state, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    ref.eval()
    audio = ref.model.encoder(mel).last_hidden_state
    logits = ref(encoder_outputs=(audio,), decoder_input_ids=tokens).logits
    out = {"audio": audio.cpu(), "full": logits.float().cpu()}
    del ref
    free(mel.device)
    return out


def procedure(dims: ModelDims, device: torch.device) -> dict[str, dict[str, torch.Tensor] | None]:
    """Every output needed by the comparisons, with one model on ``device`` at a time. A reference package
    that is not installed gives None (the other reference is still compared)."""
    if not installed("whisper") and not installed("transformers"):
        pytest.skip("neither openai-whisper nor transformers is installed")
    mel, tokens = inputs(dims, device)
    model = random_model(dims, device)
    results = {"ours32": run_ours(model, mel, tokens, scores=True)}
    state = host_state(model)
    model.half()
    results["ours16"] = run_ours(model, mel, tokens, scores=False)
    del model
    free(device)
    results["openai"] = run_openai(state, dims, mel, tokens) if installed("whisper") else None
    results["hf"] = run_hf(state, dims, mel, tokens) if installed("transformers") else None
    return results


def check(results: dict[str, dict[str, torch.Tensor] | None], label: str) -> dict[str, float]:
    ours, ours16 = results["ours32"], results["ours16"]
    errors, errors16 = {}, {}
    for name, ref in (("openai", results["openai"]), ("transformers", results["hf"])):
        if ref is None:
            print(f"\n{label}: {name} is not installed; not compared")
            continue
        errors[f"encoder vs {name}"] = rel_err(ours["audio"], ref["audio"])
        errors[f"logits (full) vs {name}"] = rel_err(ours["full"], ref["full"])
        errors[f"logits (kv cache) vs {name}"] = rel_err(ours["kv"], ref["full"])
        if "scores" in ref:
            errors[f"cross-attn scores vs {name}"] = rel_err(ours["scores"], ref["scores"])
        errors16[f"fp16 encoder vs {name} fp32"] = rel_err(ours16["audio"], ref["audio"])
        errors16[f"fp16 logits (full) vs {name} fp32"] = rel_err(ours16["full"], ref["full"])
        errors16[f"fp16 logits (kv cache) vs {name} fp32"] = rel_err(ours16["kv"], ref["full"])
    print(f"\n{label}: relative errors (||a-b||/||b||)")
    for name, err in {**errors, **errors16}.items():
        print(f"  {name:45s} {err:.3e}")
    bad = {k: v for k, v in errors.items() if not v < FP32_REL}
    bad16 = {k: v for k, v in errors16.items() if not v < FP16_REL}
    assert not bad, f"fp32 parity above {FP32_REL}: {bad}"
    assert not bad16, f"fp16 above {FP16_REL}: {bad16}"
    return {**errors, **errors16}


# -------------------------------------------------------------------------------------------------- tests


def test_procedure_on_cpu(no_tf32) -> None:
    """The GPU procedure, on the CPU at tiny dims with large-v3's vocabulary and mel count."""
    pytest.importorskip("whisper")
    pytest.importorskip("transformers")
    dims = dataclasses.replace(TINY, n_mels=128, n_vocab=51866, num_languages=100, n_audio_layer=1)
    check(procedure(dims, torch.device("cpu")), "cpu, tiny dims")


@pytest.mark.gpu
@CUDA
@pytest.mark.slow
def test_large_v3_parity_on_cuda(no_tf32) -> None:
    check(procedure(LARGE_V3, torch.device("cuda")), f"cuda ({torch.cuda.get_device_name()}), large-v3 dims")


@pytest.mark.gpu
@CUDA
def test_log_mel_on_cuda_equals_cpu() -> None:
    speech = read_wav("jfk.wav")
    noise = np.random.default_rng(1).standard_normal(16000 * 11).astype(np.float32) * 0.1
    batch = np.stack([speech[: 16000 * 11], noise])
    for n_mels in (80, 128):
        for audio in (speech, batch):
            cpu = log_mel_spectrogram(audio, n_mels, padding=N_SAMPLES)
            gpu = log_mel_spectrogram(audio, n_mels, padding=N_SAMPLES, device="cuda")
            assert gpu.device.type == "cuda" and gpu.dtype == torch.float32
            assert gpu.shape == cpu.shape
            assert (gpu.cpu() - cpu).abs().max().item() < 1e-4
        gpu_input = log_mel_spectrogram(torch.from_numpy(speech).cuda(), n_mels)
        assert (gpu_input.cpu() - log_mel_spectrogram(speech, n_mels)).abs().max().item() < 1e-4
