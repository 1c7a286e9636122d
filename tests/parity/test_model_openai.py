"""voxserve's encoder and decoder equal openai-whisper's on the same random weights, in float32 on the CPU.

The model goes through ``save_openai`` and openai-whisper's own ``load_model``, so the name mapping and the
checkpoint layout are proven along with the arithmetic. The KV-cache decoder (prefill, then single steps,
rows at different positions), the cache-free ``forward_full`` passes and the cross-attention scores are each
compared with whisper's full forward pass.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.conftest import TINY
from voxserve.config import ModelDims
from voxserve.model.load import init_random, load_checkpoint, save_openai
from voxserve.model.whisper import Whisper

whisper = pytest.importorskip("whisper")

REL = 1e-4

DIMS = {
    "tiny": TINY,
    # Decoder deeper than the encoder (as in large-v3-turbo): a swapped layer count would not load.
    "turbo-like": dataclasses.replace(TINY, n_audio_layer=1, n_text_layer=4, n_text_head=4),
    # large-v3's vocabulary: 128 mel bins and 100 languages.
    "v3-vocab": dataclasses.replace(TINY, n_mels=128, n_vocab=51866, num_languages=100),
}


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


@pytest.fixture(scope="module", params=list(DIMS), ids=list(DIMS))
def case(request, tmp_path_factory) -> dict:
    dims: ModelDims = DIMS[request.param]
    # std 0.1 rather than 0.02: activations large enough that a wrong scale or a missing bias shows.
    model = init_random(dims, seed=7, std=0.1)
    path = save_openai(model, tmp_path_factory.mktemp("openai") / "model.pt")
    ref = whisper.load_model(str(path), device="cpu").eval()
    loaded, info = load_checkpoint(path)
    g = torch.Generator().manual_seed(1)
    mel = torch.randn(2, dims.n_mels, 3000, generator=g)
    with torch.no_grad():
        ref_audio = ref.encoder(mel)
    sot = 50258
    text = torch.randint(0, 50257, (2, 12), generator=g)
    prefix = torch.tensor(
        [[sot, sot + 1, 50359 + dims.num_languages - 99, 50363 + dims.num_languages - 99]] * 2
    )
    tokens = torch.cat([prefix, text], dim=1)
    with torch.no_grad():
        ref_logits = ref.decoder(tokens, ref_audio)
    return {
        "dims": dims,
        "model": model,
        "loaded": loaded,
        "info": info,
        "path": path,
        "ref": ref,
        "mel": mel,
        "ref_audio": ref_audio,
        "tokens": tokens,
        "ref_logits": ref_logits,
    }


def test_checkpoint_round_trip_is_exact(case) -> None:
    loaded: Whisper = case["loaded"]
    assert loaded.dims == case["dims"]
    assert case["info"].format == "openai"
    ours = case["model"].state_dict()
    for name, value in loaded.state_dict().items():
        assert torch.equal(value, ours[name]), name
    ref_names = set(case["ref"].state_dict())
    assert len(ref_names) == len(ours)


def test_encoder_matches(case) -> None:
    with torch.no_grad():
        ours = case["loaded"].encoder(case["mel"])
    assert ours.shape == case["ref_audio"].shape
    assert rel_err(ours, case["ref_audio"]) < REL


def test_forward_full_matches(case) -> None:
    model: Whisper = case["loaded"]
    with torch.no_grad():
        logits = model.decoder.forward_full(case["tokens"], case["ref_audio"])
    assert logits.dtype == torch.float32
    assert rel_err(logits, case["ref_logits"]) < REL


def test_block_forward_full_matches_whisper_block(case) -> None:
    model: Whisper = case["loaded"]
    ref = case["ref"]
    tokens, audio = case["tokens"], case["ref_audio"]
    with torch.no_grad():
        x = model.decoder._embed(tokens)
        ref_x = ref.decoder.token_embedding(tokens) + ref.decoder.positional_embedding[: tokens.shape[1]]
        assert torch.equal(x, ref_x)
        for ours, theirs in zip(model.decoder.layers, ref.decoder.blocks, strict=True):
            k, v = ours.cross_attn.key(audio), ours.cross_attn.value(audio)
            y = ours.forward_full(x, k, v)
            y_ref = theirs(x, audio, mask=ref.decoder.mask)
            assert rel_err(y, y_ref) < REL
            x = y_ref


def test_kv_cache_prefill_then_steps_match(case) -> None:
    """Prefill the 4-token prompt, then decode one token at a time through the preallocated cache."""
    model: Whisper = case["loaded"]
    tokens, ref_logits = case["tokens"], case["ref_logits"]
    batch, total = tokens.shape
    cache = model.new_cache(batch)
    with torch.no_grad():
        cache.cross_k[:], cache.cross_v[:] = model.decoder.cross_kv(case["ref_audio"])
        positions = torch.arange(4).expand(batch, 4)
        logits = model.decoder(tokens[:, :4], positions, cache, 4)
        assert logits.shape == (batch, 4, case["dims"].n_vocab)
        assert rel_err(logits, ref_logits[:, :4]) < REL
        for t in range(4, total):
            step = model.decoder(tokens[:, t : t + 1], torch.full((batch, 1), t), cache, t + 1)
            assert rel_err(step[:, 0], ref_logits[:, t]) < REL, f"step {t}"


def test_kv_cache_rows_at_different_positions(case) -> None:
    """One batch whose rows stand at different positions (the engine's slots): row 1 lags row 0 by three
    tokens, and the cache slots beyond row 1's position hold stale values that its mask must hide."""
    model: Whisper = case["loaded"]
    tokens, ref_logits = case["tokens"], case["ref_logits"]
    lag = 3
    n = 4 + lag
    g = torch.Generator().manual_seed(5)
    cache = model.new_cache(2)
    with torch.no_grad():
        cache.cross_k[:], cache.cross_v[:] = model.decoder.cross_kv(case["ref_audio"])
        # Row 1 gets its 4-token prompt followed by `lag` junk tokens, which fill slots 4..n-1 with stale keys.
        junk = torch.randint(0, 50257, (lag,), generator=g)
        prefill = torch.stack([tokens[0, :n], torch.cat([tokens[1, :4], junk])])
        logits = model.decoder(prefill, torch.arange(n).expand(2, n), cache, n)
        assert rel_err(logits[0], ref_logits[0, :n]) < REL
        assert rel_err(logits[1, :4], ref_logits[1, :4]) < REL  # causal: junk after them changes nothing
        for t in range(n, tokens.shape[1]):
            p1 = t - lag  # row 1 rewinds to its real length and overwrites the junk as it goes
            step = model.decoder(
                torch.stack([tokens[0, t : t + 1], tokens[1, p1 : p1 + 1]]),
                torch.tensor([[t], [p1]]),
                cache,
                t + 1,
            )
            assert rel_err(step[0, 0], ref_logits[0, t]) < REL, f"row 0 at {t}"
            assert rel_err(step[1, 0], ref_logits[1, p1]) < REL, f"row 1 at {p1}"


def test_cross_attention_scores_match_whisper_qk(case) -> None:
    """Scores before softmax from ``cross_attention_scores`` equal the qk whisper records for alignment."""
    model: Whisper = case["loaded"]
    ref = case["ref"]
    tokens, audio = case["tokens"], case["ref_audio"]
    recorded: list[torch.Tensor] = []
    hooks = [
        block.cross_attn.register_forward_hook(lambda _m, _i, out: recorded.append(out[-1]))
        for block in ref.decoder.blocks
    ]
    try:
        with torch.no_grad(), whisper.model.disable_sdpa():
            ref_logits = ref.decoder(tokens, audio)
    finally:
        for h in hooks:
            h.remove()
    with torch.no_grad():
        logits, scores = model.decoder.cross_attention_scores(tokens, audio)
    assert rel_err(logits, ref_logits) < REL
    assert len(scores) == len(recorded) == case["dims"].n_text_layer
    for ours, theirs in zip(scores, recorded, strict=True):
        assert ours.dtype == torch.float32
        assert ours.shape == theirs.shape == (2, case["dims"].n_text_head, tokens.shape[1], 1500)
        assert rel_err(ours, theirs) < REL
        assert rel_err(ours.softmax(-1), theirs.softmax(-1)) < REL


def test_alignment_heads_default_to_whisper_default(case) -> None:
    assert torch.equal(case["loaded"].alignment_heads, case["ref"].alignment_heads.to_dense())


def test_whisper_reads_our_checkpoint_as_its_own(case) -> None:
    """The written file holds exactly whisper's dims and state-dict names."""
    ckpt = torch.load(case["path"], map_location="cpu", weights_only=True)
    assert ckpt["dims"] == dataclasses.asdict(case["ref"].dims)
    assert set(ckpt["model_state_dict"]) == set(case["ref"].state_dict())


def test_loading_to_float16_keeps_values(case) -> None:
    half, _ = load_checkpoint(case["path"], dtype="float16")
    assert half.dtype == torch.float16
    full = case["loaded"].state_dict()
    for name, value in half.state_dict().items():
        assert value.dtype == torch.float16, name
        assert torch.equal(value, full[name].half()), name
