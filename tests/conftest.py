"""Shared fixtures: paths to ../shared/data, tiny model dimensions, seeded random models, tokenizers.

Tests never download anything: models are random (seeded) or the project's own demo model, and real audio and
tokenizer files come from ../shared/data beside the repository.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from voxserve.config import ModelDims
from voxserve.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
# ../shared/data beside the repository; VOXSERVE_SHARED_DATA points elsewhere (e.g. a copy carried to the GPU machine).
SHARED = Path(os.environ.get("VOXSERVE_SHARED_DATA") or ROOT.parent / "shared" / "data")
ASSETS = SHARED / "whisper-assets"
AUDIO = SHARED / "audio"
JFK = AUDIO / "samples" / "jfk.flac"

# Tiny dimensions: the real vocabulary and contexts (so timestamps and special tokens are Whisper's own), a
# narrow, shallow network so a forward pass takes milliseconds on a CPU.
TINY = ModelDims(
    n_mels=80,
    n_audio_ctx=1500,
    n_audio_state=64,
    n_audio_head=2,
    n_audio_layer=2,
    n_vocab=51865,
    n_text_ctx=448,
    n_text_state=64,
    n_text_head=2,
    n_text_layer=2,
)

# large-v3: 128 mel bins and 100 languages; used by the GPU-marked parity tests.
LARGE_V3 = ModelDims(
    n_mels=128,
    n_audio_ctx=1500,
    n_audio_state=1280,
    n_audio_head=20,
    n_audio_layer=32,
    n_vocab=51866,
    n_text_ctx=448,
    n_text_state=1280,
    n_text_head=20,
    n_text_layer=32,
    num_languages=100,
)


def pytest_configure(config: pytest.Config) -> None:
    # One intra-op thread for the whole suite unless OMP_NUM_THREADS says otherwise: the tests run many small CPU
    # ops, and where other processes share the CPU (CI has two cores) OpenMP's barriers cost more than the ops
    # (a greedy parity test measured 0.3 s on one thread, 20 s on two under load). Subprocesses inherit it.
    torch.set_num_threads(int(os.environ.setdefault("OMP_NUM_THREADS", "1")))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """A test that adopts the engine's CPU thread policy (the bench does) must not leave the rest of the
    session single-threaded."""
    from voxserve.engine import threads

    before = torch.get_num_threads()
    yield
    threads._engine_threads = None
    if torch.get_num_threads() != before:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def shared() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"{SHARED} is missing: tests read real audio and tokenizer files from ../shared/data")
    return SHARED


@pytest.fixture(scope="session")
def tiny_dims() -> ModelDims:
    return TINY


@pytest.fixture(scope="session")
def multilingual_tiktoken(shared: Path) -> Path:
    return shared / "whisper-assets" / "multilingual.tiktoken"


@pytest.fixture(scope="session")
def tokenizer(multilingual_tiktoken: Path) -> Tokenizer:
    return Tokenizer.from_tiktoken(multilingual_tiktoken)


@pytest.fixture(scope="session")
def large_v3_cpu() -> torch.nn.Module:
    """Random large-v3 weights (seed 0), float32 on the CPU, built once per session for the GPU tests (building
    one takes ~30 s). Shared: copy it (``copy.deepcopy``) before moving or changing it."""
    from voxserve.model.load import init_random

    return init_random(LARGE_V3, seed=0)
