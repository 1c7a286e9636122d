"""The batching engine on CUDA: Triton decode attention and CUDA-graph steps against the eager references.

Run on the GPU machine: ``python3 -m pytest -q -m gpu tests/gpu``.
"""

from __future__ import annotations

import copy
import time
from dataclasses import replace

import numpy as np
import pytest
import torch

from tests.conftest import ASSETS, AUDIO, TINY
from tests.support import decisive_model, prompted_specs, read_wav, window_log_mel
from voxserve.audio.features import log_mel_spectrogram, pad_or_trim
from voxserve.decoding.batched import BatchDecoder, make_engine
from voxserve.decoding.decode import WindowDecoder, decode_windows
from voxserve.decoding.options import DecodingOptions
from voxserve.engine import kv8, packed
from voxserve.engine import mels as engine_mels
from voxserve.engine.attention import decode_attention, reference_decode_attention
from voxserve.engine.mels import window_mels
from voxserve.engine.types import AudioWindow, EngineConfig
from voxserve.tokenizer import Tokenizer

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def mels() -> torch.Tensor:
    speech = read_wav(AUDIO / "samples" / "jfk.wav")
    rng = np.random.default_rng(0)
    clips = [
        speech,
        rng.standard_normal(16000 * 20).astype(np.float32) * 0.05,
        speech[: 16000 * 3],
        speech[16000:],
    ]
    clips += [speech[16000 * k : 16000 * (k + 4)] for k in range(0, 7, 2)]
    return torch.stack([pad_or_trim(log_mel_spectrogram(x, 80)) for x in clips])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("splits", [1, 2, 8])
def test_triton_decode_attention(dtype, splits) -> None:
    g = torch.Generator(device="cuda").manual_seed(0)
    slots, t, h, d = 9, 1500, 20, 64
    k = torch.randn(slots, t, h * d, device="cuda", dtype=dtype, generator=g)
    v = torch.randn(slots, t, h * d, device="cuda", dtype=dtype, generator=g)
    q = torch.randn(5, h, d, device="cuda", dtype=dtype, generator=g)
    rows = torch.tensor([3, 0, 8, 3, 5], device="cuda")
    lengths = torch.tensor([1500, 1, 37, 700, 64], device="cuda")
    got = decode_attention(q, k, v, rows, lengths, splits=splits).float()
    ref = reference_decode_attention(q.float(), k.float(), v.float(), rows, lengths)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert (got - ref).norm() / ref.norm() < tol


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("splits", [1, 2, 8])
def test_triton_decode_attention_over_int8_caches(dtype, splits) -> None:
    """The kernel over int8 caches and their per-(position, head) scales computes the attention over the
    dequantized caches (the launch shape the engine uses for cross-attention)."""
    g = torch.Generator(device="cuda").manual_seed(0)
    slots, t, h, d = 9, 1500, 20, 64
    k = torch.randn(slots, t, h * d, device="cuda", generator=g) * 2
    v = torch.randn(slots, t, h * d, device="cuda", generator=g)
    (k8, ks), (v8, vs) = kv8.quantize(k, h), kv8.quantize(v, h)
    q = torch.randn(5, h, d, device="cuda", dtype=dtype, generator=g)
    rows = torch.tensor([3, 0, 8, 3, 5], device="cuda")
    lengths = torch.tensor([1500, 1, 37, 700, 64], device="cuda")
    got = decode_attention(q, k8, v8, rows, lengths, splits=splits, block_n=128, num_warps=2, scales=(ks, vs))
    ref = reference_decode_attention(q.float(), k8, v8, rows, lengths, scales=(ks, vs))
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    assert ((got.float() - ref).norm() / ref.norm()).item() < tol


def test_quantize_into_the_cache_equals_the_eager_quantization() -> None:
    g = torch.Generator(device="cuda").manual_seed(0)
    n, s, h, d, slots, t = 3, 1500, 20, 64, 5, 1500
    x = (torch.randn(n, s, h * d, device="cuda", generator=g) * 3).half()
    x[1, :, :d] = 0  # an all-zero head
    cache = torch.zeros(slots, t, h * d, dtype=torch.int8, device="cuda")
    scales = torch.ones(slots, h, t, device="cuda")
    slot_t = torch.tensor([4, 0, 2], device="cuda")
    kv8.quantize_into(x, slot_t, cache, scales)
    q, scale = kv8.quantize(x, h)
    assert torch.equal(cache[slot_t], q)
    torch.testing.assert_close(scales[slot_t], scale, rtol=0, atol=0)
    assert (cache[[1, 3]] == 0).all() and (scales[[1, 3]] == 1).all()  # other slots untouched


def _admissions_slow_on_the_device(eng, cycles: int = 20_000_000) -> None:
    """Start every admission of ``eng`` with ~10 ms of device time and every decode step with ~2 ms (sleep
    kernels on their streams), so that with overlapped admissions the running rows do step while one is on the
    device, and a step launched ahead for a row that then finished is still running when its slot's next
    admission is launched, whatever the host's speed (a tiny model's admission is otherwise done about when its
    launch returns): what the admission's wait for the steps' stream guards against."""
    runner = eng.runner
    launch_admission, launch_step = runner._launch_admission, runner._launch

    def slow_admission(slots, specs, windows):
        torch.cuda._sleep(cycles)
        return launch_admission(slots, specs, windows)

    def slow_step(slots, sample):
        torch.cuda._sleep(cycles // 5)
        return launch_step(slots, sample)

    runner._launch_admission, runner._launch = slow_admission, slow_step


@pytest.mark.parametrize(
    ("fused_step", "lookahead", "overlap"),
    [
        (False, False, False),
        (True, False, False),
        (True, True, False),
        (True, True, True),
        (False, True, True),
    ],
    ids=["unfused", "fused", "lookahead", "overlap", "overlap-unfused"],
)
def test_engine_tokens_equal_reference_fp32_with_graphs(
    tokenizer, mels, fused_step, lookahead, overlap
) -> None:
    """overlap: admissions on their own stream beside the steps (EngineConfig.overlap_admissions), rows joining
    once their admission is done: the same tokens, and steps did run while admissions were on the device (unfused:
    the steps' matrix products through cuBLAS, whose workspace each stream's graphs must have to themselves)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    model = decisive_model(TINY, tokenizer, std=0.2, eot_boost=2.0).cuda()
    config = EngineConfig(
        max_slots=3,
        max_admit=2,
        cuda_graphs=True,
        fused_step=fused_step,
        lookahead=lookahead,
        overlap_admissions=overlap,
    )
    eng = make_engine(model, tokenizer, config)
    if overlap:
        _admissions_slow_on_the_device(eng)
    try:
        prompted = {"language": "en", "without_timestamps": True, "prompt": "the quick brown fox jumps over"}
        for opts in [{"language": "en"}, {}, {"language": "en", "without_timestamps": True}, prompted]:
            options = DecodingOptions(**opts)
            ref = decode_windows(model, tokenizer, mels.cuda(), options)
            got = BatchDecoder(eng, model, tokenizer).decode(mels.cuda(), options)
            assert [g.tokens for g in got] == [r.tokens for r in ref]
            for g, r in zip(got, ref, strict=True):
                assert g.avg_logprob == pytest.approx(r.avg_logprob, abs=1e-3)
        assert eng.runner._graphs, "the decode step should have run as captured graphs"
        # The prefill ran as captured graphs too: 3- and 4-token prompts of 1 or 2 rows, padded to 4 tokens; a
        # short window in the full window's graph, unmasked (its cross-attention reads stop at each row's length).
        assert eng.runner.cross_by_length
        assert eng.runner._prefill_shape(1, 3, 700, True) == (1, 4, model.dims.n_audio_ctx, False)
        assert (1, 4, model.dims.n_audio_ctx, False) in eng.runner._prefill_graphs
        assert (2, 4, model.dims.n_audio_ctx, False) in eng.runner._prefill_graphs
        # The prompted windows' longer prompts (previous text) ran through a longer prompt-length bucket's graph.
        assert any(t > 4 for _, t, _, _ in eng.runner._prefill_graphs), sorted(eng.runner._prefill_graphs)
        assert (eng.steps_beside_admissions > 0) is overlap
    finally:
        eng.close()


@pytest.fixture(scope="module")
def large_v3_fp32(large_v3_cpu) -> torch.nn.Module:
    return copy.deepcopy(large_v3_cpu).cuda()


@pytest.mark.parametrize(
    ("dtype", "fused_step", "cross_kv"),
    [
        (torch.float16, False, "model"), (torch.float16, True, "model"), (torch.float16, True, "int8"),
        (torch.bfloat16, False, "model"), (torch.bfloat16, True, "model"), (torch.bfloat16, True, "int8"),
        (torch.float32, True, "int8"),
    ],
)  # fmt: skip
def test_engine_step_logits_large_v3(large_v3_fp32, dtype, fused_step, cross_kv) -> None:
    """At large-v3 dimensions in half precision, the engine's graph-captured step (fused QKV, Triton attention)
    gives the logits of the eager reference pass: compared in fp32 against a float64-free fp32 reference, its
    error is no larger than the eager half-precision pass's own (twice it, or 1e-2). With 8-bit cross K/V the
    bound is four times it, or 3e-2 (in fp32, where the eager pass's error is 0, int8's own error alone). 8-bit
    cross K/V changes greedy tokens of the tiny random test model, so it is held to this bound, not the token
    oracle."""
    tok = Tokenizer.from_tiktoken(ASSETS / "multilingual.tiktoken", num_languages=100)
    model32 = large_v3_fp32
    mel = pad_or_trim(log_mel_spectrogram(read_wav(AUDIO / "samples" / "jfk.wav"), 128))[None].cuda()
    options = DecodingOptions(
        language="en", without_timestamps=True, sample_len=8, suppress_tokens=(-1, tok.eot)
    )
    with torch.no_grad():
        features32 = model32.encoder(mel)
        model = copy.deepcopy(model32).to(dtype)  # the same weights, rounded
        eng = make_engine(model, tok, EngineConfig(max_slots=2, fused_step=fused_step, cross_kv=cross_kv))
        try:
            decoder, ticket = BatchDecoder(eng, model, tok).submit(mel[0], options)
            tokens = list(decoder.initial_tokens) + list(ticket.result(timeout=120).tokens)
            runner = eng.runner
            # Park slot 0 on the finished sequence minus its last token and run one more step on it.
            runner.policy.length[0] = len(tokens) - 1
            runner.policy.last[0] = tokens[-2]
            got = runner._logits(torch.tensor([0], device="cuda"))[0]
        finally:
            eng.close()
        seq = torch.tensor([tokens[:-1]], device="cuda")
        ref32 = model32.decoder.forward_full(seq, features32)[0, -1]
        half = model.decoder.forward_full(seq, model.encoder(mel.to(dtype)))[0, -1]
    err_engine = ((got - ref32).norm() / ref32.norm()).item()
    err_eager = ((half - ref32).norm() / ref32.norm()).item()
    print(f"relative logit error: engine {err_engine:.2e}, eager {err_eager:.2e}")
    bound = max(2 * err_eager, 1e-2) if cross_kv == "model" else max(4 * err_eager, 3e-2)
    assert err_engine < bound, (err_engine, err_eager)


@pytest.mark.parametrize("packed_encoder", [False, True], ids=["per-length", "packed"])
def test_mixed_short_windows_with_graphs_equal_the_reference_fp32(tokenizer, packed_encoder) -> None:
    """Windows of several lengths admitted together on CUDA (encoder graphs per batch bucket and length, or one
    packed pass: eager in fp32, where FlashAttention does not run; one prefill reading each slot's cross K/V at its
    own length) decode as the reference does, window by window."""
    torch.backends.cuda.matmul.allow_tf32 = False
    model = decisive_model(TINY, tokenizer, std=0.2, eot_boost=2.0).cuda()
    speech = read_wav(AUDIO / "samples" / "jfk.wav")
    mels = []
    for seconds in (1, 2.5, 2.5, 4, 7, 30):
        mel = log_mel_spectrogram(speech[: int(16000 * seconds)], 80)
        mels.append(mel[:, : min(mel.shape[-1] // 2 * 2, 3000)].cuda())
    options = DecodingOptions(language="en", without_timestamps=True, sample_len=12)
    expected = [decode_windows(model, tokenizer, m[None], options)[0].tokens for m in mels]
    config = EngineConfig(max_slots=6, max_admit=6, short_window_frames=(100,), packed_encoder=packed_encoder)
    eng = make_engine(model, tokenizer, config)
    try:
        ran = eng.runner.warmup()
        assert (("encoder 100", 4) in ran) is not packed_encoder
        assert (("packed encoder", 50) in ran) is packed_encoder and not eng.runner._packed_graphed
        batch = BatchDecoder(eng, model, tokenizer)
        pending = [batch.submit(m, options) for m in mels]
        got = [d.result_from(t.result(timeout=120)).tokens for d, t in pending]
        lengths = {frames for _, frames, _ in eng.runner._encoder_graphs}
    finally:
        eng.close()
    assert got == expected
    if not packed_encoder:
        assert {100, 250, 400, 700} <= lengths  # the short windows ran as graphs too


@pytest.mark.parametrize("cross_kv", ["model", "int8"])
def test_prefill_cross_attention_by_length_equals_the_masked_gather(tokenizer, cross_kv) -> None:
    """On CUDA the prefill's cross-attention reads each row's slot up to its own length through the decode
    kernel; the gathered, masked SDPA form (the CPU's) gives the same logits, padding rows included."""
    torch.backends.cuda.matmul.allow_tf32 = False
    model = decisive_model(TINY, tokenizer, std=0.2, eot_boost=2.0).cuda()
    eng = make_engine(model, tokenizer, EngineConfig(max_slots=4, cross_kv=cross_kv))
    eng.close()
    runner = eng.runner
    assert runner.cross_by_length
    g = torch.Generator().manual_seed(0)
    mels = torch.randn(2, TINY.n_mels, 3000, generator=g).clamp(-1, 1).cuda()
    full, lang = TINY.n_audio_ctx, tokenizer.sot + 1
    tokens = torch.zeros(4, 8, dtype=torch.long)
    tokens[0, :4] = torch.tensor([tokenizer.sot, lang, tokenizer.transcribe, 0])
    tokens[1, :5] = torch.tensor([tokenizer.sot, lang, tokenizer.transcribe, 7, 9])
    pad = [runner.scratch] * 2
    with torch.inference_mode():
        runner.encode(mels, torch.tensor([2, 0], device="cuda"))
        got = runner._prefill_logits(
            torch.tensor([[2, 0, *pad], [900, 1200, 1, 1], [3, 4, 0, 0], [0, 0, 0, 0]]).cuda(),
            tokens.cuda(),
            full,
            False,
        )
        runner.cross_by_length = False
        want = runner._prefill_logits(
            torch.tensor([[2, 0, *pad], [900, 1200, full, full], [3, 4, 0, 0], [0, 0, 0, 0]]).cuda(),
            tokens.cuda(),
            full,
            True,
        )
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a[:2], b[:2], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(got[0][0], got[0][1])  # the rows differ, so a mix-up would show


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("cross_kv", ["model", "int8"])
def test_packed_encoder_passes_equal_each_window_encoded_alone_fp16(tokenizer, cross_kv) -> None:
    """Packed passes (engine/packed.py) replayed from their graphs (the same pass size twice with other rows, so
    stale inputs would show), and run eagerly past the row limit, give each row the features and cross K/V it gets
    encoded alone, within fp16 rounding (FlashAttention's variable-length form against batched SDPA)."""
    model = decisive_model(TINY, tokenizer, std=0.2, eot_boost=2.0).cuda().half()
    config = EngineConfig(
        max_slots=8, max_admit=4, cross_kv=cross_kv, short_window_frames=(100, 400), packed_encoder=True
    )
    eng = make_engine(model, tokenizer, config)
    eng.close()
    runner = eng.runner
    assert runner.packed_encoder and runner._packed_graphed
    g = torch.Generator().manual_seed(0)
    cases = [([400, 100, 2], True), ([300, 200], True), ([3000] * 4, True), ([200, 3000, 64, 800, 2], False)]
    for frames, graphed in cases:
        mels = [torch.randn(TINY.n_mels, f, generator=g).clamp(-1, 1).half().cuda() for f in frames]
        slots = list(range(len(frames)))
        with torch.inference_mode():
            features = runner.encode_packed(mels, slots).clone()
            caches = [x.clone() for x in (runner.cross_k, runner.cross_v, *(runner.cross_scales or ()))]
            start = 0
            for mel, slot in zip(mels, slots, strict=True):
                alone = runner.encode(mel[None], torch.tensor([slot], device="cuda"))[0]
                n = len(alone)
                assert _rel_err(features[start : start + n], alone) < 5e-3, (frames, slot)
                if cross_kv == "model":
                    for got, want in zip(caches, (runner.cross_k, runner.cross_v), strict=True):
                        assert _rel_err(got[:, slot, :n], want[:, slot, :n]) < 5e-3, (frames, slot)
                else:
                    for got, got_scale, want, want_scale in zip(
                        caches[:2],
                        caches[2:],
                        (runner.cross_k, runner.cross_v),
                        runner.cross_scales,
                        strict=True,
                    ):
                        a = kv8.dequantize(got[:, slot, :n], got_scale[:, slot, :, :n], torch.float32)
                        b = kv8.dequantize(want[:, slot, :n], want_scale[:, slot, :, :n], torch.float32)
                        assert _rel_err(a, b) < 1.5e-2, (frames, slot)
                start += n
        size = packed.pass_size(sum(frames) // 2, TINY.n_audio_ctx)
        assert (size in runner._packed_graphs) is graphed


@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9), reason="fp8 needs sm89+"
)
def test_packed_encoder_with_fp8_linears_folds_norms_into_quantization(tokenizer, monkeypatch) -> None:
    """An fp8 encoder's packed pass (one fused query/key/value Linear a layer, the layer norms and GELU folded into
    the fp8 input quantization) gives each window the features of the same pass with those done as torch
    operations (fp8rows.KERNEL and qlinear.FOLD_INTO_FP8 off, the default), and of the fp16 encoder within what
    fp8 itself costs."""
    from voxserve.model import fp8rows, qlinear
    from voxserve.model.quant import quantize_encoder

    model = decisive_model(TINY, tokenizer, std=0.2, eot_boost=2.0).cuda().half()
    fp16 = copy.deepcopy(model)
    quantize_encoder(model, "fp8")
    g = torch.Generator().manual_seed(0)
    frames = [400, 100, 2, 300, 200]
    mels = [torch.randn(TINY.n_mels, f, generator=g).clamp(-1, 1).half().cuda() for f in frames]
    features = {}
    for name, m, kernel in [("folded", model, True), ("torch", model, False), ("fp16", fp16, True)]:
        monkeypatch.setattr(fp8rows, "KERNEL", kernel)
        monkeypatch.setattr(qlinear, "FOLD_INTO_FP8", name == "folded")
        config = EngineConfig(max_slots=8, max_admit=8, short_window_frames=(100, 400), packed_encoder=True)
        eng = make_engine(m, tokenizer, config)
        eng.close()
        with torch.inference_mode():
            features[name] = eng.runner.encode_packed(mels, list(range(len(mels)))).clone()
        if name == "folded":
            assert all(f is not None for f in eng.runner._encoder_qkv)
    vs_torch = _rel_err(features["folded"], features["torch"])
    vs_fp16, torch_vs_fp16 = (
        _rel_err(features["folded"], features["fp16"]),
        _rel_err(features["torch"], features["fp16"]),
    )
    print(
        f"fp8 packed pass: folded vs torch ops {vs_torch:.5f}; against fp16: {vs_fp16:.4f} / {torch_vs_fp16:.4f}"
    )
    assert vs_torch < 1e-2
    assert vs_fp16 < torch_vs_fp16 * 1.1 + 1e-3 and vs_fp16 < 0.1


def test_packed_encoder_fp16_engine_decodes_as_per_length_batches(tokenizer) -> None:
    """The fp16 engine with packed, graphed passes decodes mixed short windows to the
    tokens of the same engine encoding one batch per length."""
    model = decisive_model(TINY, tokenizer, std=0.2, eot_boost=2.0).cuda().half()
    speech = read_wav(AUDIO / "samples" / "jfk.wav")
    mels = []
    for seconds in (1, 2.5, 2.5, 4, 7, 11):
        mel = log_mel_spectrogram(speech[: int(16000 * seconds)], 80)
        mels.append(mel[:, : mel.shape[-1] // 2 * 2].half().cuda())
    options = DecodingOptions(language="en", without_timestamps=True, sample_len=12)
    results = {}
    for packing in (False, True):
        config = EngineConfig(
            max_slots=6, max_admit=6, short_window_frames=(100, 400), packed_encoder=packing
        )
        eng = make_engine(model, tokenizer, config)
        try:
            ran = eng.runner.warmup()
            assert (("packed encoder", 256) in ran) is packing
            batch = BatchDecoder(eng, model, tokenizer)
            pending = [batch.submit(m, options) for m in mels]
            results[packing] = [d.result_from(t.result(timeout=120)).tokens for d, t in pending]
        finally:
            eng.close()
    assert results[True] == results[False]
    assert any(len(t) > 3 for t in results[True])


def _audio_clips() -> tuple[list[np.ndarray], list[int]]:
    speech = read_wav(AUDIO / "samples" / "jfk.wav")
    # the 2 s clip fills its window: merged into a longer batch, its last frame reads its end's reflection
    clips = [speech[: int(16000 * s)] for s in (0.7, 2.0, 2.5, 2.7, 7.0, 10.9)]
    return clips, [100, 200, 400, 400, 800, 1600]


@pytest.mark.parametrize("merged", [False, True], ids=["mels-per-length", "mels-merged"])
@pytest.mark.parametrize("packed_encoder", [False, True], ids=["per-length", "packed"])
def test_audio_windows_on_cuda_decode_as_the_reference_fp32(
    tokenizer, packed_encoder, merged, monkeypatch
) -> None:
    """Windows sent as audio: the engine makes their log-mels on the GPU (cuFFT, padded rows; one batch per length,
    or every length in one, engine/mels.py MERGE_LENGTHS). They equal the host's log-mels within 1e-4, and the fp32
    engine decodes them to the reference decoder's tokens on the host's log-mels. (In fp16 those ~1e-5 differences
    can flip a late token of the random model: seen on an H100, stop 20.)"""
    monkeypatch.setattr(engine_mels, "MERGE_LENGTHS", merged)
    torch.backends.cuda.matmul.allow_tf32 = False
    model = decisive_model(TINY, tokenizer, std=0.2, eot_boost=2.0).cuda()
    clips, frames = _audio_clips()
    host = [window_log_mel(c, f) for c, f in zip(clips, frames, strict=True)]
    windows = [AudioWindow(c, f) for c, f in zip(clips, frames, strict=True)]
    for made, ref in zip(window_mels(windows, 80, torch.device("cuda")), host, strict=True):
        torch.testing.assert_close(made.cpu(), ref, atol=1e-4, rtol=0)
    options = DecodingOptions(language="en", without_timestamps=True, sample_len=12)
    expected = [decode_windows(model, tokenizer, m[None].cuda(), options)[0].tokens for m in host]
    config = EngineConfig(
        max_slots=6,
        max_admit=6,
        short_window_frames=(100, 200, 400, 800, 1600),
        packed_encoder=packed_encoder,
    )
    eng = make_engine(model, tokenizer, config)
    try:
        ran = eng.runner.warmup()
        assert ("log-mel 400", 8) in ran  # FFT plans up to the padded row count
        batch = BatchDecoder(eng, model, tokenizer)
        pending = [batch.submit(w, options) for w in windows]
        got = [d.result_from(t.result(timeout=120)).tokens for d, t in pending]
        # keyed (live utterances): their audio is kept on the device; the second time nothing is sent
        keyed = [replace(w, key=i) for i, w in enumerate(windows)]
        cache = eng.runner.audio_cache
        runs = []
        for _ in range(2):
            sent = cache.sent
            pending = [batch.submit(w, options) for w in keyed]
            runs.append(
                ([d.result_from(t.result(timeout=120)).tokens for d, t in pending], cache.sent - sent)
            )
    finally:
        eng.close()
    assert got == expected
    assert any(len(t) > 3 for t in got)
    assert runs == [(expected, sum(len(c) for c in clips)), (expected, 0)]


def test_packed_graphs_take_device_log_mels_as_host_ones_fp16(tokenizer) -> None:
    """Log-mels already on the GPU are copied into a captured packed pass's inputs on the device (only the index
    travels from the host): the same pass, replayed from the same graph, gives bit-identical features and cross
    K/V whether the same values come from the device or the host."""
    model = decisive_model(TINY, tokenizer, std=0.2, eot_boost=2.0).cuda().half()
    config = EngineConfig(max_slots=8, max_admit=8, short_window_frames=(100, 400), packed_encoder=True)
    eng = make_engine(model, tokenizer, config)
    eng.close()
    runner = eng.runner
    clips, frames = _audio_clips()
    windows = [AudioWindow(c, f) for c, f in zip(clips, frames, strict=True)]
    on_device = window_mels(windows, 80, torch.device("cuda"))
    slots = list(range(len(windows)))
    results = []
    with torch.inference_mode():
        for mels in (on_device, [m.cpu() for m in on_device], on_device):
            features = runner.encode_packed(mels, slots).clone()
            results.append((features, runner.cross_k.clone(), runner.cross_v.clone()))
    size = packed.pass_size(sum(frames) // 2, TINY.n_audio_ctx)
    assert size in runner._packed_graphs
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_scatter_kernel_equals_index_put(dtype) -> None:
    """The packed pass's cross K/V write (one Triton kernel for keys and values, engine/scatter.py) puts every row
    where index_put does, bit for bit, with a width that is no multiple of its block and a ragged last block."""
    from voxserve.engine.scatter import scatter_rows

    g = torch.Generator(device="cuda").manual_seed(0)
    p, c, n = 1003, 1280, 4 * 1500
    k = torch.randn(p, c, generator=g, device="cuda").to(dtype)
    v = torch.randn(p, c, generator=g, device="cuda").to(dtype)
    to = torch.randperm(n, generator=g, device="cuda")[:p]
    got = (torch.zeros(n, c, dtype=dtype, device="cuda"), torch.zeros(n, c, dtype=dtype, device="cuda"))
    want = (torch.zeros_like(got[0]), torch.zeros_like(got[1]))
    scatter_rows((k, v), to, got, kernel=True)
    want[0][to], want[1][to] = k, v
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.parametrize(
    ("dtype", "cross_kv"),
    [(torch.float32, "model"), (torch.float16, "model"), (torch.float32, "int8"), (torch.float16, "int8")],
)
def test_packed_prefill_gives_each_row_what_the_padded_one_gives(tokenizer, dtype, cross_kv) -> None:
    """The packed prefill (engine/packed_prefill.py): in fp16 replayed from its graphs (two admissions of one pass
    size, so stale inputs would show; FlashAttention's causal variable-length form), in fp32 eagerly: each row's
    first-token logits, no-speech probability and self K/V as the padded prefill gives them; with int8 cross K/V
    both read the same quantized caches (the live bench's --cross-kv int8)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    model = decisive_model(TINY, tokenizer, std=0.2, eot_boost=2.0).cuda().to(dtype)
    g = torch.Generator().manual_seed(0)
    tol = 1e-4 if dtype == torch.float32 else 1e-2
    runners = {}
    for on in (False, True):
        config = EngineConfig(max_slots=6, max_admit=8, packed_prefill=on, cross_kv=cross_kv)
        eng = make_engine(model, tokenizer, config)
        eng.close()
        runners[on] = eng.runner
    padded, packed_runner = runners[False], runners[True]
    for frames, lengths in (([3000, 200, 64, 800], [3, 20, 7, 11]), ([400, 100, 3000], [12, 4, 33])):
        mels = [torch.randn(TINY.n_mels, f, generator=g).clamp(-1, 1).to(dtype).cuda() for f in frames]
        slots = [3, 0, 5, 1][: len(frames)]
        specs = prompted_specs(tokenizer, lengths)
        with torch.inference_mode():
            want = padded.admit(slots, specs, mels)
            got = packed_runner.admit(slots, specs, mels)
        assert sorted(packed_runner._packed_prefill_graphs) == ([64] if dtype == torch.float16 else [])
        for a, b in zip(got, want, strict=True):
            assert abs(a.no_speech_prob - b.no_speech_prob) < tol
        if dtype == torch.float32:
            assert [a.token for a in got] == [a.token for a in want]
        for slot, n in zip(slots, lengths, strict=True):
            for cache in ("self_k", "self_v"):
                a = getattr(packed_runner, cache)[:, slot, :n].float()
                b = getattr(padded, cache)[:, slot, :n].float()
                assert _rel_err(a, b) < tol, (cache, slot)


def test_packed_prefill_fp16_engine_decodes_as_the_padded_prefill(tokenizer) -> None:
    """The fp16 engine with packed, graphed prefills (after warm-up) decodes prompted short windows to the
    tokens of the same engine with padded prefills."""
    model = decisive_model(TINY, tokenizer, std=0.2, eot_boost=2.0).cuda().half()
    speech = read_wav(AUDIO / "samples" / "jfk.wav")
    mels = []
    for seconds in (1, 2.5, 4, 7, 11):
        mel = log_mel_spectrogram(speech[: int(16000 * seconds)], 80)
        mels.append(mel[:, : mel.shape[-1] // 2 * 2].half().cuda())
    results = {}
    for on in (False, True):
        config = EngineConfig(max_slots=6, max_admit=6, short_window_frames=(100, 400), packed_prefill=on)
        eng = make_engine(model, tokenizer, config)
        try:
            ran = eng.runner.warmup()
            assert (("packed prefill", 64) in ran) is on
            batch = BatchDecoder(eng, model, tokenizer)
            pending = [
                batch.submit(
                    m, DecodingOptions(language="en", without_timestamps=True, sample_len=12, prompt=p)
                )
                for m in mels
                for p in ("", "and so my fellow Americans ask not")
            ]
            results[on] = [d.result_from(t.result(timeout=120)).tokens for d, t in pending]
        finally:
            eng.close()
    assert results[True] == results[False]
    assert any(len(t) > 3 for t in results[True])


def _live_config(*, slots: int, admit: int, overlap: bool) -> EngineConfig:
    """The live engine's form: audio windows of the live lengths, packed encoder and prefill."""
    return EngineConfig(
        max_slots=slots,
        max_admit=admit,
        short_window_frames=(100, 200, 400, 800, 1600),
        packed_encoder=True,
        packed_prefill=True,
        overlap_admissions=overlap,
    )


def test_overlapped_admissions_fp16_live_engine_decodes_as_serial(tokenizer) -> None:
    """The live engine's form (fp16, audio windows made into log-mels on the device with the audio cache, packed
    encoder and prefill, graphs after warm-up) with admissions on their own stream decodes growing utterances'
    partials arriving over time to the tokens of the same engine admitting one after the other; rows stepped
    while admissions (slowed on the device) ran."""
    model = decisive_model(TINY, tokenizer, std=0.2, eot_boost=2.0).cuda().half()
    speech = read_wav(AUDIO / "samples" / "jfk.wav")
    growth = [(0.7, 100), (1.5, 200), (2.5, 400), (3.5, 400), (6.0, 800), (9.0, 1600)]
    results, beside = {}, {}
    for on in (False, True):
        eng = make_engine(model, tokenizer, _live_config(slots=6, admit=3, overlap=on))
        try:
            eng.runner.warmup()
            _admissions_slow_on_the_device(eng)
            batch = BatchDecoder(eng, model, tokenizer)
            pending = []
            for k, (seconds, frames) in enumerate(growth):
                for utterance, start in enumerate((0, 16000)):  # two utterances, each keyed: its audio cached
                    clip = speech[start : start + int(16000 * seconds)]
                    window = AudioWindow(clip, frames, key=utterance)
                    for p in ("", "and so my fellow Americans ask not"):
                        opts = DecodingOptions(
                            language="en", without_timestamps=True, sample_len=16, prompt=p
                        )
                        pending.append(batch.submit(window, opts))
                time.sleep(0.002 * (k % 3))  # some arrive while others decode
            results[on] = [d.result_from(t.result(timeout=120)).tokens for d, t in pending]
            beside[on] = eng.steps_beside_admissions
        finally:
            eng.close()
    assert results[True] == results[False]
    assert any(len(t) > 3 for t in results[True])
    assert beside[False] == 0 and beside[True] > 0


@pytest.mark.parametrize("overlap", [False, True], ids=["serial", "overlap"])
def test_live_admission_launch_never_waits_for_the_device(tokenizer, overlap) -> None:
    """Launching a live admission (audio windows, keyed for the audio cache, packed encoder and prefill, graphs
    after warm-up), and then a decode step of its rows, queues the device work without one synchronising call:
    torch's sync debug mode raises at any.
    Stop 26 found six in ``PolicyState.reset`` (a constant stored through a tensor index copies it from pageable
    memory), which made the engine thread wait for the admission's encoder pass and left nothing to overlap."""
    model = decisive_model(TINY, tokenizer, std=0.2, eot_boost=2.0).cuda().half()
    speech = read_wav(AUDIO / "samples" / "jfk.wav")
    eng = make_engine(model, tokenizer, _live_config(slots=8, admit=8, overlap=overlap))
    eng.close()  # the runner alone, driven from here
    runner = eng.runner
    runner.warmup()
    options = DecodingOptions(language="en", without_timestamps=True, sample_len=8)
    specs = [WindowDecoder(model, tokenizer, options).row_spec()] * 4
    slots = [0, 1, 2, 3]
    picked = []
    for seconds in (1.5, 3.0, 7.0):  # the second and third find the first's audio kept on the device
        windows = [
            AudioWindow(speech[start : start + int(16000 * seconds)], frames, key=k)
            for k, (start, frames) in enumerate([(0, 800), (8000, 800), (16000, 1600), (0, 400)])
        ]
        windows = [w for w in windows if len(w.samples) <= 160 * w.frames]
        admitted = slots[: len(windows)]
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            pending = runner.launch_admission(admitted, specs[: len(windows)], windows)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        picked.append(runner.finish_admission(pending))
        torch.cuda.set_sync_debug_mode("error")  # a decode step's launch: no wait either
        try:
            launched = runner.launch(admitted)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert len(runner.collect(launched)[0]) == len(admitted)
    assert [len(p) for p in picked] == [4, 4, 3]  # the last 7 s window did not fit its 4 s length
    # each utterance's audio sent once, as it grew: keys 0-2 up to 7 s, key 3 up to 3 s
    assert runner.audio_cache.sent == 3 * 7 * 16000 + 3 * 16000
