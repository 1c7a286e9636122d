"""8-bit cross K/V (engine/kv8.py): the quantization's error bound, attention over it against full precision,
and the engine's refusal where the kernel cannot run. The Triton kernel itself is tested on the GPU
(tests/gpu/test_engine_cuda.py)."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import TINY
from voxserve.engine import kv8
from voxserve.engine.attention import reference_decode_attention
from voxserve.engine.runner import Runner, slot_bytes
from voxserve.engine.types import EngineConfig
from voxserve.model.load import init_random


def test_quantize_rounds_within_half_a_step_of_each_head_vector():
    g = torch.Generator().manual_seed(0)
    heads, dh = 4, 8
    # heads of very different magnitudes, one all zero, an outlier: each (position, head) has its own scale
    x = torch.randn(3, 50, heads * dh, generator=g) * torch.tensor([1e-3, 1.0, 30.0, 0.0]).repeat_interleave(
        dh
    )
    x[0, 7, 9] = 40.0
    q, scale = kv8.quantize(x, heads)
    assert q.dtype == torch.int8 and q.shape == x.shape and scale.shape == (3, heads, 50)
    back = kv8.dequantize(q, scale, torch.float32)
    amax = x.view(3, 50, heads, dh).abs().amax(dim=3)  # [n, s, heads]
    step = (amax / 127).repeat_interleave(dh, dim=2)
    assert ((back - x).abs() <= step / 2 * (1 + 1e-5) + 1e-30).all()
    # each vector's largest magnitude is kept (it maps to 127), so nothing clips
    torch.testing.assert_close(back.view(3, 50, heads, dh).abs().amax(dim=3), amax, rtol=1e-6, atol=0)
    assert torch.isfinite(back).all() and (back[..., 3 * dh :] == 0).all()


def test_attention_over_8bit_caches_stays_close_to_full_precision():
    """Scales are looked up through each row's slot; the result is near full-precision attention even where the
    attention is peaked (keys up to 3x the query's scale). On this case float8 E4M3 with a scale per head, tried
    first, was 5.4% off; int8 measured 0.9% (bound 2%)."""
    g = torch.Generator().manual_seed(1)
    slots, t, h, d = 5, 300, 4, 16
    k = torch.randn(slots, t, h * d, generator=g) * torch.linspace(0.5, 3.0, slots)[:, None, None]
    v = torch.randn(slots, t, h * d, generator=g)
    q = torch.randn(3, h, d, generator=g)
    rows, lengths = torch.tensor([4, 0, 2]), torch.tensor([300, 17, 150])
    (k8, ks), (v8, vs) = kv8.quantize(k, h), kv8.quantize(v, h)
    want = reference_decode_attention(q, k, v, rows, lengths)
    got = reference_decode_attention(q, k8, v8, rows, lengths, scales=(ks, vs))
    err = ((got - want).norm() / want.norm()).item()
    assert err < 2e-2, err
    wrong = reference_decode_attention(
        q, k8, v8, rows, lengths, scales=(ks.flip(0), vs)
    )  # another slot's scales
    assert ((wrong - want).norm() / want.norm()).item() > 10 * err


def test_cpu_engine_refuses_8bit_cross_kv_and_config_checks_the_name():
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        Runner(
            init_random(TINY, seed=0), n_slots=2, eot=0, no_timestamps=1, no_speech=2, timestamp_begin=3,
            blank_ids=[4], cross_kv="int8",
        )  # fmt: skip
    with pytest.raises(ValueError, match="cross_kv must be"):
        EngineConfig(cross_kv="fp8")


def test_8bit_slots_are_smaller():
    model = init_random(TINY, seed=0).half()
    d = TINY
    per_layer = 2 * d.n_audio_ctx * (d.n_text_state * 2 - (d.n_text_state + 4 * d.n_text_head))
    assert slot_bytes(model) - slot_bytes(model, "int8") == d.n_text_layer * per_layer


def test_kernel_entry_checks_caches_against_scales():
    """The CUDA entry refuses int8 caches without their scales (the kernel would read raw int8 as values), scales
    with float caches, and scales of another shape, before any launch."""
    from voxserve.engine.attention import _triton_decode_attention

    h, d, t = 2, 8, 10
    q = torch.randn(1, h, d)
    k, v = torch.randn(3, t, h * d), torch.randn(3, t, h * d)
    (k8, ks), (v8, vs) = kv8.quantize(k, h), kv8.quantize(v, h)
    rows, lengths = torch.tensor([1]), torch.tensor([t])
    with pytest.raises(ValueError, match="exactly when the caches are int8"):
        _triton_decode_attention(q, k8, v8, rows, lengths, 1)
    with pytest.raises(ValueError, match="exactly when the caches are int8"):
        _triton_decode_attention(q, k, v, rows, lengths, 1, scales=(ks, vs))
    with pytest.raises(ValueError, match="contiguous"):
        _triton_decode_attention(q, k8, v8, rows, lengths, 1, scales=(ks[:2], vs[:2]))
