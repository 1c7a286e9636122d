"""Hugging Face parity both ways: voxserve's ``save_hf`` loads in ``transformers`` and a ``transformers``
``save_pretrained`` directory (single file and sharded) loads in voxserve, with the same encoder output, logits
and greedy tokens, and with dims, alignment heads and suppression lists read from the files.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
import torch

from tests.conftest import ASSETS, TINY
from voxserve.config import ModelDims
from voxserve.model.load import hf_config, init_random, load_checkpoint, save_hf
from voxserve.model.whisper import Whisper
from voxserve.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")
from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration  # noqa: E402

REL = 1e-4
TURBO_LIKE = dataclasses.replace(TINY, n_audio_layer=1, n_text_layer=4)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Decode steps are many tiny ops: where other processes share the CPU, OpenMP's barriers between them
    cost more than the ops (the greedy test measured 0.3 s on one thread, 20 s on two under load)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def generation_config(tok: Tokenizer, heads: list[list[int]]) -> dict:
    """The fields of a real Whisper generation_config.json that transformers' ``generate`` and voxserve read."""
    specials = tok.special_tokens
    return {
        "alignment_heads": heads,
        "begin_suppress_tokens": [220, tok.eot],
        "bos_token_id": tok.eot,
        "decoder_start_token_id": tok.sot,
        "eos_token_id": tok.eot,
        "pad_token_id": tok.eot,
        "is_multilingual": True,
        "lang_to_id": {f"<|{c}|>": specials[f"<|{c}|>"] for c in tok.all_language_codes},
        "task_to_id": {"transcribe": tok.transcribe, "translate": tok.translate},
        "no_timestamps_token_id": tok.no_timestamps,
        "prev_sot_token_id": tok.sot_prev,
        "max_length": 448,
        "suppress_tokens": list(tok.non_speech_tokens),
    }


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.from_tiktoken(ASSETS / "multilingual.tiktoken", language="en", task="transcribe")


@pytest.fixture(scope="module")
def mel() -> torch.Tensor:
    return torch.randn(2, 80, 3000, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def tokens(tok: Tokenizer) -> torch.Tensor:
    text = torch.randint(0, 50257, (2, 10), generator=torch.Generator().manual_seed(4))
    prefix = torch.tensor([tok.sot_sequence_including_notimestamps] * 2)
    return torch.cat([prefix, text], dim=1)


# ------------------------------------------------------------------------------- voxserve -> transformers


@pytest.fixture(scope="module")
def ours_to_hf(tok: Tokenizer, tmp_path_factory) -> tuple[Whisper, Path, object]:
    # std 0.3 makes the logits decisive, so greedy argmax is not decided by float rounding.
    model = init_random(TINY, seed=11, std=0.3)
    out = tmp_path_factory.mktemp("ours") / "whisper-random"
    save_hf(
        model,
        out,
        config=hf_config(TINY, eot=tok.eot, sot=tok.sot),
        generation=generation_config(tok, [[1, 0], [1, 1], [0, 1]]),
    )
    hf = WhisperForConditionalGeneration.from_pretrained(out).eval()
    return model, out, hf


def test_save_hf_loads_in_transformers_with_same_outputs(ours_to_hf, mel, tokens) -> None:
    model, _, hf = ours_to_hf
    assert hf.config.vocab_size == TINY.n_vocab and hf.config.decoder_layers == TINY.n_text_layer
    with torch.no_grad():
        audio = model.encoder(mel)
        ref_audio = hf.model.encoder(mel).last_hidden_state
        assert rel_err(audio, ref_audio) < REL
        ref = hf(encoder_outputs=(ref_audio,), decoder_input_ids=tokens).logits
        assert rel_err(model.decoder.forward_full(tokens, ref_audio), ref) < REL
        # The KV-cache path against transformers too: prefill the prompt, then single steps.
        cache = model.new_cache(2)
        cache.cross_k[:], cache.cross_v[:] = model.decoder.cross_kv(ref_audio)
        n = 4
        assert rel_err(model.decoder(tokens[:, :n], torch.arange(n).expand(2, n), cache, n), ref[:, :n]) < REL
        for t in range(n, tokens.shape[1]):
            step = model.decoder(tokens[:, t : t + 1], torch.full((2, 1), t), cache, t + 1)
            assert rel_err(step[:, 0], ref[:, t]) < REL


def test_save_hf_generation_config_is_what_transformers_reads(ours_to_hf, tok) -> None:
    _, out, hf = ours_to_hf
    g = hf.generation_config
    assert g.alignment_heads == [[1, 0], [1, 1], [0, 1]]
    assert g.decoder_start_token_id == tok.sot and g.no_timestamps_token_id == tok.no_timestamps
    assert g.lang_to_id["<|en|>"] == tok.language_token("en") and len(g.lang_to_id) == 99
    assert g.task_to_id == {"transcribe": tok.transcribe, "translate": tok.translate}
    assert g.is_multilingual is True
    assert list(g.suppress_tokens) == list(tok.non_speech_tokens)
    # ... and what voxserve reads back from the same directory.
    loaded, info = load_checkpoint(out)
    assert loaded.dims == TINY
    assert info.format == "hf" and info.directory == out
    assert info.alignment_heads == ((1, 0), (1, 1), (0, 1))
    heads = torch.zeros(TINY.n_text_layer, TINY.n_text_head, dtype=torch.bool)
    heads[1, 0] = heads[1, 1] = heads[0, 1] = True
    assert torch.equal(loaded.alignment_heads, heads)
    assert info.suppress_tokens == tok.non_speech_tokens
    assert info.begin_suppress_tokens == (220, tok.eot)


def test_save_hf_round_trip_is_exact(ours_to_hf) -> None:
    model, out, _ = ours_to_hf
    loaded, _ = load_checkpoint(out)
    theirs = loaded.state_dict()
    for name, value in model.state_dict().items():
        assert torch.equal(value, theirs[name]), name


def greedy(
    model: Whisper, mel: torch.Tensor, prefix: list[int], steps: int, suppress: list[int], begin: list[int]
):
    """The simplest greedy loop over voxserve's KV cache: prefill the prefix, then one token a step."""
    batch = mel.shape[0]
    cache = model.new_cache(batch)
    with torch.no_grad():
        cache.cross_k[:], cache.cross_v[:] = model.decoder.cross_kv(model.encoder(mel))
        seq = torch.tensor([prefix] * batch)
        logits = model.decoder(seq, torch.arange(len(prefix)).expand(batch, -1), cache, len(prefix))[:, -1]
        out, margins = [], []
        for i in range(steps):
            logits[:, suppress] = -float("inf")
            if i == 0:
                logits[:, begin] = -float("inf")
            top = logits.topk(2, dim=-1)
            margins.append((top.values[:, 0] - top.values[:, 1]).min().item())
            nxt = top.indices[:, :1]
            out.append(nxt)
            pos = len(prefix) + i
            logits = model.decoder(nxt, torch.full((batch, 1), pos), cache, pos + 1)[:, -1]
    return torch.cat(out, dim=1), min(margins)


def test_greedy_tokens_equal_transformers_generate(ours_to_hf, tok, mel) -> None:
    model, _, hf = ours_to_hf
    steps = 30
    prefix = list(tok.sot_sequence_including_notimestamps)
    suppress = [*tok.non_speech_tokens, tok.eot]  # end-of-text suppressed: every row runs all 30 steps
    begin = [220]
    ours, margin = greedy(model, mel, prefix, steps, suppress, begin)
    # A top-2 gap far above float32 noise: equal tokens then mean equal arithmetic, not luck.
    assert margin > 1e-3
    config = copy.deepcopy(hf.generation_config)
    config.suppress_tokens = suppress
    config.begin_suppress_tokens = begin
    config.max_new_tokens = steps
    config.max_length = None
    with torch.no_grad():
        ref = hf.generate(
            input_features=mel,
            generation_config=config,
            language="en",
            task="transcribe",
            return_timestamps=False,
            do_sample=False,
            num_beams=1,
        )
    ref = ref.sequences if hasattr(ref, "sequences") else ref
    if ref.shape[1] == steps + len(prefix):  # some versions return the forced prefix as well
        assert ref[:, : len(prefix)].tolist() == [prefix] * 2
        ref = ref[:, len(prefix) :]
    assert ref.tolist() == ours.tolist()
    assert len(set(ours[0].tolist())) > 5  # a real sequence, not one token repeated


# ------------------------------------------------------------------------------- transformers -> voxserve


def hf_whisper(dims: ModelDims, tok: Tokenizer, heads: list[list[int]], seed: int):
    """A random transformers Whisper with the token ids and generation config of a real checkpoint."""
    config = WhisperConfig(
        vocab_size=dims.n_vocab,
        num_mel_bins=dims.n_mels,
        d_model=dims.n_text_state,
        encoder_layers=dims.n_audio_layer,
        decoder_layers=dims.n_text_layer,
        encoder_attention_heads=dims.n_audio_head,
        decoder_attention_heads=dims.n_text_head,
        encoder_ffn_dim=4 * dims.n_audio_state,
        decoder_ffn_dim=4 * dims.n_text_state,
        max_source_positions=dims.n_audio_ctx,
        max_target_positions=dims.n_text_ctx,
        bos_token_id=tok.eot,
        eos_token_id=tok.eot,
        pad_token_id=tok.eot,
        decoder_start_token_id=tok.sot,
        init_std=0.1,
    )
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(**generation_config(tok, heads))
    return model


@pytest.mark.parametrize(
    ("dims", "shard"),
    [(TINY, None), (TURBO_LIKE, "1MB")],
    ids=["single-file", "sharded-turbo-like"],
)
def test_transformers_checkpoint_loads_with_same_outputs(dims, shard, tok, mel, tokens, tmp_path) -> None:
    heads = [[dims.n_text_layer - 1, 1], [dims.n_text_layer // 2, 0]]
    hf = hf_whisper(dims, tok, heads, seed=5)
    kw = {"max_shard_size": shard} if shard else {}
    hf.save_pretrained(tmp_path, **kw)
    if shard:
        index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
        assert len(set(index["weight_map"].values())) > 1, "expected several shards"
        assert not (tmp_path / "model.safetensors").exists()
    model, info = load_checkpoint(tmp_path)
    assert model.dims == dims
    assert info.alignment_heads == tuple(tuple(h) for h in heads)
    assert info.suppress_tokens == tok.non_speech_tokens
    assert info.begin_suppress_tokens == (220, tok.eot)
    assert int(model.alignment_heads.sum()) == len(heads)
    with torch.no_grad():
        ref_audio = hf.model.encoder(mel).last_hidden_state
        assert rel_err(model.encoder(mel), ref_audio) < REL
        ref = hf(encoder_outputs=(ref_audio,), decoder_input_ids=tokens).logits
        assert rel_err(model.decoder.forward_full(tokens, ref_audio), ref) < REL
        cache = model.new_cache(2)
        cache.cross_k[:], cache.cross_v[:] = model.decoder.cross_kv(ref_audio)
        logits = model.decoder(tokens, torch.arange(tokens.shape[1]).expand(2, -1), cache, tokens.shape[1])
        assert rel_err(logits, ref) < REL


def test_dims_without_generation_config(tok, tmp_path) -> None:
    """Without generation_config.json the config's own token ids decide the vocabulary layout."""
    hf = hf_whisper(TINY, tok, [[1, 0]], seed=1)
    hf.save_pretrained(tmp_path)
    (tmp_path / "generation_config.json").unlink()
    model, info = load_checkpoint(tmp_path)
    assert model.dims == TINY
    assert info.alignment_heads is None and info.generation == {}
    assert torch.equal(model.alignment_heads, Whisper(TINY).alignment_heads)
