"""The accuracy gate: exact zero for identical models, a faithful int8 model passes, a 2-bit one fails loudly."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from tests.conftest import TINY
from voxserve.model.load import init_random
from voxserve.model.quant import quantizable_linears, quantize_model
from voxserve.quant.gate import (
    DEFAULT_MAX_MEAN_KL,
    AccuracyGateError,
    DivergenceReport,
    check_accuracy,
    measure_divergence,
)


@pytest.fixture(scope="module")
def peaked():
    """std 0.2 weights: logits spread over several nats, so quantization error shows up in the KL (with the
    usual 0.02 the distributions are nearly uniform and every candidate looks alike)."""
    return init_random(TINY, seed=0, std=0.2)


@pytest.fixture(scope="module")
def windows():
    g = torch.Generator().manual_seed(0)
    mels = [torch.randn(TINY.n_mels, 3000, generator=g).clamp(-1, 1) for _ in range(2)]
    seqs = [[50258, 50259, 50360] + torch.randint(0, 50000, (30,), generator=g).tolist() for _ in mels]
    return mels, seqs


def two_bit(model):
    """Weights rounded to {-amax, 0, +amax} per output channel: a deliberately broken quantization."""
    with torch.no_grad():
        for _, lin in quantizable_linears(model):
            s = lin.weight.abs().amax(dim=1, keepdim=True)
            lin.weight.copy_(torch.round(lin.weight / s) * s)
    return model


def test_identical_models_do_not_diverge(peaked, windows):
    r = measure_divergence(peaked, copy.deepcopy(peaked), *windows)
    assert r.mean_kl == 0 and r.max_kl == 0 and r.top1_agreement == 1.0
    assert r.n_windows == 2 and r.n_tokens == sum(len(s) for s in windows[1])
    assert check_accuracy(r) is r


@pytest.mark.parametrize("precision", ["int8", "int8-dynamic"])
def test_faithful_quantization_passes(peaked, windows, precision):
    r = check_accuracy(measure_divergence(peaked, quantize_model(copy.deepcopy(peaked), precision), *windows))
    # Measured ~1e-3 nats here, 50x under the default limit; something was lost, so not zero.
    assert 0 < r.mean_kl < DEFAULT_MAX_MEAN_KL / 10 and r.p99_kl < 10 * r.mean_kl
    assert r.top1_agreement > 0.85


def test_two_bit_weights_fail_with_the_figures(peaked, windows):
    report = measure_divergence(peaked, two_bit(copy.deepcopy(peaked)), *windows)
    assert report.mean_kl > 10 * DEFAULT_MAX_MEAN_KL  # ~2 nats measured
    with pytest.raises(AccuracyGateError, match=r"mean KL .* exceeds the limit 0\.05 .*top-1 agreement") as e:
        check_accuracy(report)
    assert e.value.report is report


def test_a_model_that_emits_nan_fails(peaked, windows):
    broken = copy.deepcopy(peaked)
    with torch.no_grad():
        broken.decoder.layers[0].fc2.weight[0, 0] = math.nan
    report = measure_divergence(peaked, broken, *windows)
    assert math.isinf(report.mean_kl)
    with pytest.raises(AccuracyGateError):
        check_accuracy(report)


def test_bad_arguments(peaked, windows):
    mels, seqs = windows
    with pytest.raises(ValueError, match="differ in length"):
        measure_divergence(peaked, peaked, mels, seqs[:1])
    with pytest.raises(ValueError, match="no windows"):
        measure_divergence(peaked, peaked, [], [])
    with pytest.raises(ValueError, match="different dimensions"):
        measure_divergence(
            peaked, init_random(TINY.__class__(**{**TINY.to_dict(), "n_text_layer": 1})), mels, seqs
        )
    report = DivergenceReport(0.1, 0.2, 0.3, 0.5, 10, 1)
    with pytest.raises(ValueError, match="positive"):
        check_accuracy(report, 0.0)
    assert check_accuracy(report, max_mean_kl=0.5) is report
