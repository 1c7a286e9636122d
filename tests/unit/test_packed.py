"""The packed encoder pass (engine/packed.py): windows of different lengths laid end to end encode to what each
encodes alone, and the runner writes their cross K/V where a per-length batch would."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.conftest import TINY
from tests.support import attention_from_cu
from voxserve.decoding.batched import make_engine
from voxserve.engine import packed
from voxserve.engine.types import EngineConfig
from voxserve.model import qlinear
from voxserve.model.load import init_random
from voxserve.model.qlinear import Fp8Linear

FRAMES = [200, 3000, 64, 800, 2]  # a full window, the shortest window (one position), and a tail after them


@pytest.fixture(scope="module")
def model():
    return init_random(TINY, std=0.2).eval()


def _mels() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(TINY.n_mels, f, generator=g) for f in FRAMES]


def test_pass_sizes_and_the_index() -> None:
    assert packed.pass_size(1, 1500) == 256 and packed.pass_size(4097, 1500) == 4352
    assert packed.pass_size(8193, 1500) == 9216
    assert packed.pass_size(packed.GRAPH_POSITIONS + 1, 1500) == packed.GRAPH_POSITIONS + 1  # eager, exact
    assert packed.pass_size(70, 64) == 128  # steps never longer than a window
    sizes = packed.pass_sizes(1500)
    assert sizes[0] == 256 and sizes[-1] == packed.GRAPH_POSITIONS and list(sizes) == sorted(set(sizes))

    index = packed.pack_index(FRAMES, [0, 1, 2, 3, 4], size=2048, rows=8, scratch=9, n_ctx=1500)
    assert index.cu.tolist() == [0, 100, 1600, 1632, 2032, 2033, 2048, 2048, 2048, 2048]
    assert index.bounds[-1] == (2033, 2048) and index.longest == 1500
    assert index.position[98:102].tolist() == [98, 99, 0, 1] and index.position[2033:].tolist() == list(
        range(15)
    )
    assert index.slot[99:101].tolist() == [0, 1] and set(index.slot[2033:].tolist()) == {9}
    # the first row's first frame has no previous one (the zero frame, 2P), its last no next one
    assert index.conv1[0].tolist() == [4096, 0, 1] and index.conv1[199].tolist() == [198, 199, 4096]
    assert index.conv2[0].tolist() == [4096, 0, 1] and index.conv2[100].tolist() == [4096, 200, 201]
    with pytest.raises(ValueError, match="cannot pack"):
        packed.pack_index([201], [0], size=256, rows=1, scratch=9, n_ctx=1500)
    with pytest.raises(ValueError, match="cannot pack"):
        packed.pack_index([200, 200], [0, 1], size=256, rows=1, scratch=9, n_ctx=1500)


def _packed_pass(model, mels, qkv=None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The packed pass over ``mels`` -> (features, each window's features encoded alone by the model)."""
    used = sum(FRAMES) // 2
    size = packed.pass_size(used, TINY.n_audio_ctx)
    index = packed.pack_index(FRAMES, range(5), size=size, rows=8, scratch=9, n_ctx=TINY.n_audio_ctx)
    mel = torch.cat([m.T for m in mels] + [torch.zeros(2 * size + 1 - 2 * used, TINY.n_mels)])
    on_device = {"conv1": index.conv1, "conv2": index.conv2, "position": index.position, "cu": index.cu}
    with torch.no_grad():
        out = packed.encode_packed(
            model.encoder, packed.stem_weights(model.encoder), mel, index, on_device, qkv
        )
        return out, [model.encoder(m[None])[0] for m in mels]


@pytest.mark.parametrize("projections", ["separate", "fused"])
def test_each_packed_row_encodes_as_it_does_alone(model, projections) -> None:
    """Also with each layer's query, key and value as one Linear (qkv_projections)."""
    model = copy.deepcopy(model)
    qkv = packed.qkv_projections(model.encoder) if projections == "fused" else None
    out, alone = _packed_pass(model, _mels(), qkv)
    start = 0
    for want in alone:
        torch.testing.assert_close(out[start : start + len(want)], want, rtol=1e-5, atol=2e-5)
        start += len(want)


@pytest.mark.parametrize("fold", [False, True])
def test_packed_pass_with_fp8_linears(model, fold, monkeypatch) -> None:
    """The encoder's Linears in fp8 (on the CPU through torch's operations: quantize_model refuses fp8 off
    CUDA, Fp8Linear runs): the fused query/key/value, with the layer norms and GELU handed to the fp8 Linears
    (norm_linear, gelu_linear, FOLD_INTO_FP8) or not, give the packed pass of separate projections, and each
    window about what it gets alone. Not equal: differences of float rounding between the two paths (~1e-6) flip some activations
    to the next E4M3 value, which later layers carry (0.4-2.9% measured, against fp8's own ~5-6%)."""
    monkeypatch.setattr(qlinear, "FOLD_INTO_FP8", fold)
    model = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    with (
        torch.no_grad()
    ):  # layer norms that are not the identity (init_random's are), so that their use shows
        for layer in model.encoder.layers:
            for ln in (layer.attn_ln, layer.mlp_ln):
                ln.weight.copy_(1 + 0.3 * torch.randn(ln.weight.shape, generator=g))
                ln.bias.copy_(0.3 * torch.randn(ln.bias.shape, generator=g))
    _, exact = _packed_pass(model, _mels())  # the float encoder's
    model = copy.deepcopy(model)
    for layer in model.encoder.layers:
        for owner, name in [(layer.attn, n) for n in ("query", "key", "value", "out")] + [
            (layer, "fc1"),
            (layer, "fc2"),
        ]:
            setattr(owner, name, Fp8Linear(getattr(owner, name)))
    mels = _mels()
    separate, alone = _packed_pass(model, mels)
    fused, _ = _packed_pass(model, mels, packed.qkv_projections(model.encoder))
    torch.testing.assert_close(fused, separate, rtol=1e-5, atol=2e-5)
    start = 0
    for want, float_want in zip(alone, exact, strict=True):
        got = fused[start : start + len(want)]
        assert float((got - want).norm() / want.norm()) < 0.05
        assert float((want - float_want).norm() / float_want.norm()) < 0.1  # fp8's own error, ~5-6%
        start += len(want)


def test_the_runner_writes_each_rows_cross_kv_into_its_slot(model, tokenizer) -> None:
    mels = _mels()
    slots = [3, 0, 4, 1, 2]
    with make_engine(model, tokenizer, EngineConfig(max_slots=5, max_admit=8, packed_encoder=True)) as engine:
        runner = engine.runner
        features = runner.encode_packed(mels, slots)
        got_k, got_v = runner.cross_k.clone(), runner.cross_v.clone()
        runner.cross_k.zero_(), runner.cross_v.zero_()
        start = 0
        for mel, slot in zip(mels, slots, strict=True):
            alone = runner.encode(mel[None], torch.tensor([slot]))[0]
            torch.testing.assert_close(features[start : start + len(alone)], alone, rtol=1e-5, atol=2e-5)
            start += len(alone)
        assert start == len(features)
    # [layers, slots (+ scratch), heads, positions, head size] on the CPU; the scratch slot holds the tail
    torch.testing.assert_close(got_k[:, :5], runner.cross_k[:, :5], rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(got_v[:, :5], runner.cross_v[:, :5], rtol=1e-5, atol=2e-5)
    assert got_k[:, :5].abs().amax() > 0


def test_warm_up_runs_the_full_window_batched_and_short_ones_packed(model, tokenizer) -> None:
    config = EngineConfig(max_slots=2, short_window_frames=(100, 400), packed_encoder=True)
    with make_engine(model, tokenizer, config) as engine:
        ran = engine.runner.warmup()
    assert [r for r in ran if "encoder" in r[0]] == [("encoder 3000", 1), ("packed encoder", 50)]


def test_packed_inputs_send_mels_side_by_side_and_the_index() -> None:
    """The staging buffer a captured pass reads: mels side by side then zeros, the index as int32, all in one
    buffer, and a second, smaller send leaves nothing of the first behind."""
    mels = _mels()
    index = packed.pack_index(FRAMES, range(5), size=2048, rows=8, scratch=9, n_ctx=1500)
    inputs = packed.PackedInputs(2048, 8, TINY.n_mels, torch.device("cpu"))
    inputs.send(mels, index)
    views = inputs.on_device()
    assert views["mel"].dtype == torch.float32 and views["mel"].shape == (TINY.n_mels, 4097)
    torch.testing.assert_close(views["mel"][:, : sum(FRAMES)], torch.cat(mels, dim=1), rtol=0, atol=0)
    assert not views["mel"][:, sum(FRAMES) :].any()
    for name in ("conv1", "conv2", "position", "slot", "cu"):
        assert torch.equal(views[name].long(), getattr(index, name).long()), name
    inputs.send(mels[:2], packed.pack_index(FRAMES[:2], [3, 4], size=2048, rows=8, scratch=9, n_ctx=1500))
    assert not views["mel"][:, sum(FRAMES[:2]) :].any() and views["slot"][0] == 3
    assert views["cu"].tolist() == [0, 100, 1600, 2048] + [2048] * 6


def test_pass_sizes_share_one_pair_of_buffers() -> None:
    """A smaller pass size's inputs live in the largest size's buffers (graphs replay one at a time), each
    size's views at its own offsets; a larger size cannot borrow a smaller one's."""
    large = packed.PackedInputs(2048, 8, TINY.n_mels, torch.device("cpu"))
    small = packed.PackedInputs(512, 8, TINY.n_mels, torch.device("cpu"), share=large)
    assert small.device is large.device and small.host is large.host
    mels = _mels()[2:4]
    small.send(mels, packed.pack_index(FRAMES[2:4], [3, 4], size=512, rows=8, scratch=9, n_ctx=1500))
    views = small.on_device()
    assert views["mel"].shape == (TINY.n_mels, 1025)
    torch.testing.assert_close(views["mel"][:, :864], torch.cat(mels, dim=1), rtol=0, atol=0)
    assert not views["mel"][:, 864:].any() and views["slot"][0] == 3
    assert views["cu"].tolist() == [0, 32, 432, 512] + [512] * 6
    with pytest.raises(ValueError, match="larger pass size"):
        packed.PackedInputs(4096, 8, TINY.n_mels, torch.device("cpu"), share=large)


class _ReplayedCapture:
    """A CPU stand-in for a CUDA graph: replay runs the captured function again into the captured output."""

    def __init__(self, fn, out):
        self.fn, self.out = fn, out

    def replay(self):
        self.out.copy_(self.fn())


def test_the_graphed_path_reads_every_input_from_its_buffers(model, tokenizer, monkeypatch) -> None:
    """The captured form of a packed pass (inputs sent into one buffer, read through views, padded to the pass
    size with a tail) on the CPU with a stand-in graph: two replays of one pass size with other windows each
    give every row what it encodes alone, and its cross K/V in its slot."""
    monkeypatch.setattr(packed, "varlen_attention", attention_from_cu)
    with make_engine(model, tokenizer, EngineConfig(max_slots=5, max_admit=4, packed_encoder=True)) as engine:
        runner = engine.runner
        runner._packed_graphed = True
        runner._capture = lambda fn: (lambda out: (_ReplayedCapture(fn, out), out))(fn())
        g = torch.Generator().manual_seed(1)
        for frames in ([400, 100, 2], [300, 200], [64, 800]):
            mels = [torch.randn(TINY.n_mels, f, generator=g) for f in frames]
            slots = [4, 0, 2][: len(frames)]
            features = runner.encode_packed(mels, slots).clone()
            got = runner.cross_k.clone()
            start = 0
            for mel, slot in zip(mels, slots, strict=True):
                alone = runner.encode(mel[None], torch.tensor([slot]))[0]
                n = len(alone)
                torch.testing.assert_close(features[start : start + n], alone, rtol=1e-4, atol=1e-4)
                torch.testing.assert_close(
                    got[:, slot, :, :n], runner.cross_k[:, slot, :, :n], rtol=1e-4, atol=1e-4
                )
                start += n
        assert sorted(runner._packed_graphs) == [256, 512]


def test_scatter_rows_writes_each_row_where_its_index_says() -> None:
    """The cross K/V write of packed positions (engine/scatter.py; the CPU form here, the CUDA kernel in
    tests/gpu/test_engine_cuda.py): rows land at their indices of each cache, the other rows untouched."""
    from voxserve.engine.scatter import scatter_rows

    g = torch.Generator().manual_seed(3)
    k, v = torch.randn(37, 20, generator=g), torch.randn(37, 20, generator=g)
    to = torch.randperm(90, generator=g)[:37]
    caches = (torch.zeros(90, 20), torch.full((90, 20), 7.0))
    scatter_rows((k, v), to, caches)
    assert torch.equal(caches[0][to], k) and torch.equal(caches[1][to], v)
    rest = torch.ones(90, dtype=torch.bool)
    rest[to] = False
    assert not caches[0][rest].any() and bool((caches[1][rest] == 7).all())
    with pytest.raises(ValueError, match="one cache per rows"):
        scatter_rows((k, v), to, caches[:1])
