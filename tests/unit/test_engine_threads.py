"""The CPU thread policy (engine/threads.py): the engine's worker thread runs its own thread count and the
creating thread keeps its own; under the policy the worker gets the threads and callers run one."""

from __future__ import annotations

import threading

import pytest
import torch

from tests.conftest import TINY
from voxserve.decoding.batched import make_engine
from voxserve.decoding.decode import WindowDecoder
from voxserve.decoding.options import DecodingOptions
from voxserve.engine import threads
from voxserve.engine.types import EngineConfig, WindowRequest
from voxserve.model.load import init_random


@pytest.fixture(scope="module")
def model():
    return init_random(TINY, seed=0).eval()


def _worker_counts(engine, model, tokenizer) -> list[int]:
    """Thread counts the worker ran its decode steps with, for one short request."""
    seen: list[int] = []
    original = engine.runner.launch

    def step(*args, **kwargs):  # runs in the worker thread
        seen.append((threading.current_thread().name, torch.get_num_threads()))
        return original(*args, **kwargs)

    engine.runner.launch = step
    spec = WindowDecoder(model, tokenizer, DecodingOptions(language="en", sample_len=3)).row_spec()
    engine.submit(WindowRequest(mel=torch.zeros(TINY.n_mels, 200), spec=spec)).result(timeout=60)
    assert seen and {name for name, _ in seen} == {"voxserve-engine"}
    return sorted({n for _, n in seen})


def test_the_worker_runs_its_count_and_the_creator_keeps_its_own(model, tokenizer):
    torch.set_num_threads(2)
    with make_engine(model, tokenizer, EngineConfig(max_slots=2, cpu_threads=1)) as engine:
        assert torch.get_num_threads() == 2  # the creator's count is put back
        assert _worker_counts(engine, model, tokenizer) == [1]
        assert engine.runner.cpu_step_threads == 1  # without the policy: the configured layer threads


def test_under_the_policy_the_worker_gets_the_threads_and_callers_run_one(model, tokenizer):
    torch.set_num_threads(2)
    assert threads.engine_owns_cpu_threads() == 2
    assert torch.get_num_threads() == 1 and threads.engine_owns_cpu_threads(5) == 2  # adopted once
    with make_engine(model, tokenizer, EngineConfig(max_slots=2)) as engine:
        assert torch.get_num_threads() == 1
        assert engine.runner.cpu_step_threads is None  # the whole step runs with the worker's count
        assert _worker_counts(engine, model, tokenizer) == [2]


def test_serve_adopts_the_policy_on_the_cpu_only():
    from voxserve.cli.serve import _adopt_cpu_thread_policy

    _adopt_cpu_thread_policy("cuda")
    assert threads.engine_threads() is None
    torch.set_num_threads(2)
    _adopt_cpu_thread_policy("cpu")
    assert threads.engine_threads() == 2 and torch.get_num_threads() == 1
