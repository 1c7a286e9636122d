"""few_rows.linear is F.linear computed in another BLAS form: same values (up to summation order), same shape."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from voxserve.config import ModelDims
from voxserve.model import few_rows
from voxserve.model.load import init_random


@pytest.mark.parametrize(
    "shape", [(1, 64), (2, 64), (3, 1, 64), (few_rows.MAX_ROWS, 64), (few_rows.MAX_ROWS + 1, 64)]
)
@pytest.mark.parametrize("with_bias", [True, False])
def test_equals_f_linear(shape, with_bias):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g)
    weight = torch.randn(96, 64, generator=g)
    bias = torch.randn(96, generator=g) if with_bias else None
    got = few_rows.linear(x, weight, bias)
    assert got.shape == (*shape[:-1], 96) and got.is_contiguous()
    torch.testing.assert_close(got, F.linear(x, weight, bias), rtol=1e-5, atol=1e-5)


def test_empty_and_mixed_dtype_inputs_take_f_linear():
    weight = torch.randn(8, 4)
    assert few_rows.linear(torch.randn(0, 4), weight).shape == (0, 8)
    half = few_rows.linear(torch.randn(2, 4, dtype=torch.bfloat16), weight.bfloat16())
    assert half.dtype == torch.bfloat16


def test_decoder_logits_over_few_rows_match_the_embedding_product():
    dims = ModelDims(n_mels=80, n_audio_ctx=16, n_audio_state=32, n_audio_head=2, n_audio_layer=1, n_text_ctx=8,
                     n_text_state=32, n_text_head=2, n_text_layer=1, n_vocab=51865)  # fmt: skip
    decoder = init_random(dims, seed=0).decoder
    with torch.no_grad():
        for rows in (1, 2, 5, few_rows.MAX_ROWS + 3):
            h = torch.randn(rows, 32)
            want = decoder.ln(h) @ decoder.token_embedding.weight.T
            torch.testing.assert_close(decoder.logits(h), want, rtol=1e-5, atol=1e-5)
