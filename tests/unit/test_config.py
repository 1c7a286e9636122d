"""ModelDims: validation, and dims read from openai-whisper and Hugging Face configs of every vocabulary layout."""

from __future__ import annotations

import dataclasses
import types

import pytest
import torch

from tests.conftest import LARGE_V3, TINY
from voxserve.config import (
    FRAMES_PER_SECOND,
    N_FRAMES,
    N_SAMPLES,
    TIME_PRECISION,
    ModelDims,
    resolve_dtype,
)
from voxserve.model.load import hf_config

whisper = pytest.importorskip("whisper")

ENGLISH_ONLY = dataclasses.replace(TINY, n_vocab=51864, multilingual=False)


def test_constants_equal_whisper() -> None:
    from whisper import audio

    assert (N_SAMPLES, N_FRAMES, FRAMES_PER_SECOND) == (
        audio.N_SAMPLES,
        audio.N_FRAMES,
        audio.FRAMES_PER_SECOND,
    )
    assert TIME_PRECISION == pytest.approx(audio.HOP_LENGTH * 2 / audio.SAMPLE_RATE)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"n_mels": 0}, "n_mels"),
        ({"n_text_layer": -1}, "n_text_layer"),
        ({"n_audio_state": 2.5}, "n_audio_state"),
        ({"n_text_head": 3}, "divisible"),
        ({"n_vocab": 51866}, "n_vocab=51866"),  # 100 languages' size with 99 declared
        ({"num_languages": 100}, "100 languages"),
        ({"multilingual": False}, "English-only"),
    ],
)
def test_invalid_dims_raise(change, match) -> None:
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(TINY, **change)


def test_dims_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        TINY.n_mels = 128  # type: ignore[misc]


@pytest.mark.parametrize("dims", [TINY, LARGE_V3, ENGLISH_ONLY], ids=["tiny", "large-v3", "english-only"])
def test_openai_dims_round_trip(dims: ModelDims) -> None:
    """to_openai gives whisper's ModelDimensions fields; from_openai recovers languages and layout from
    n_vocab exactly as openai-whisper's tokenizer does."""
    ref = whisper.model.ModelDimensions(**dims.to_openai())
    assert dataclasses.asdict(ref) == dims.to_openai()
    back = ModelDims.from_openai(dataclasses.asdict(ref))
    assert back == dims
    # openai-whisper's own reading of the same n_vocab (its properties, on a stand-in holding only dims):
    ref_model = types.SimpleNamespace(dims=ref)
    ref_model.is_multilingual = whisper.model.Whisper.is_multilingual.fget(ref_model)
    assert back.multilingual == ref_model.is_multilingual
    assert back.num_languages == whisper.model.Whisper.num_languages.fget(ref_model)


def test_from_openai_errors() -> None:
    dims = TINY.to_openai()
    with pytest.raises(ValueError, match="missing"):
        ModelDims.from_openai({k: v for k, v in dims.items() if k != "n_audio_ctx"})
    with pytest.raises(ValueError, match="too small"):
        ModelDims.from_openai({**dims, "n_vocab": 50000})


@pytest.mark.parametrize(
    ("dims", "eot", "sot"),
    [(TINY, 50257, 50258), (LARGE_V3, 50257, 50258), (ENGLISH_ONLY, 50256, 50257)],
    ids=["tiny", "large-v3", "english-only"],
)
def test_hf_config_round_trip(dims, eot, sot) -> None:
    cfg = hf_config(dims, eot=eot, sot=sot)
    # Without a generation config the token ids alone fix the layout (as for real tiny / tiny.en / large-v3).
    assert ModelDims.from_hf_config(cfg) == dims
    assert ModelDims.from_hf_config(cfg, {}) == dims
    generation = {
        "is_multilingual": dims.multilingual,
        "lang_to_id": {f"<|{i}|>": i for i in range(dims.num_languages)},
    }
    assert ModelDims.from_hf_config(cfg, generation) == dims


def test_hf_config_loads_in_transformers() -> None:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.WhisperConfig(**hf_config(LARGE_V3, eot=50257, sot=50258))
    assert (cfg.num_mel_bins, cfg.vocab_size, cfg.d_model) == (128, 51866, 1280)
    assert (cfg.encoder_layers, cfg.decoder_layers, cfg.encoder_attention_heads) == (32, 32, 20)
    assert (cfg.encoder_ffn_dim, cfg.max_source_positions, cfg.max_target_positions) == (5120, 1500, 448)
    assert not cfg.scale_embedding


def test_hf_config_errors() -> None:
    cfg = hf_config(TINY, eot=50257, sot=50258)
    with pytest.raises(ValueError, match="d_model"):
        ModelDims.from_hf_config({k: v for k, v in cfg.items() if k != "d_model"})
    with pytest.raises(ValueError, match="too small"):
        ModelDims.from_hf_config({**cfg, "vocab_size": 50300})
    # A generation config whose language table disagrees with the vocabulary size.
    with pytest.raises(ValueError, match="n_vocab"):
        ModelDims.from_hf_config(cfg, {"lang_to_id": {"<|en|>": 50259}})


def test_resolve_dtype() -> None:
    assert resolve_dtype("fp16") is torch.float16
    assert resolve_dtype("bfloat16") is torch.bfloat16
    assert resolve_dtype(torch.float32) is torch.float32
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("int4")
