"""Live utterances' audio kept on the device between decodes (engine/audio_cache.py), on the CPU device."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from voxserve.engine import audio_cache
from voxserve.engine.audio_cache import AudioCache
from voxserve.engine.mels import window_mels
from voxserve.engine.types import AudioWindow
from voxserve.live.service import LiveOptions, LiveService

CPU = torch.device("cpu")


def _signal(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(n).astype(np.float32)


def _same(got: list[torch.Tensor], windows: list[AudioWindow]) -> None:
    for g, w in zip(got, windows, strict=True):
        torch.testing.assert_close(g, torch.from_numpy(w.samples), atol=0, rtol=0)


def test_a_growing_utterance_sends_only_what_it_gained():
    x = _signal(0, 80000)
    cache = AudioCache(CPU)
    previous = 0
    for n in (3000, 3000, 20000, 50001, 80000):  # past the first buffer (2 s): it grows, keeping what it had
        sent = cache.sent
        windows = [AudioWindow(x[:n], 500, key="a")]
        _same(cache.signals(windows), windows)
        assert cache.sent - sent == n - previous
        previous = n
    assert len(cache) == 1


def test_keys_unkeyed_windows_and_one_key_twice_in_one_call():
    a, b, c = _signal(1, 9000), _signal(2, 7000), _signal(3, 5000)
    cache = AudioCache(CPU)
    cache.signals([AudioWindow(a[:4000], 100, "a")])
    windows = [
        AudioWindow(c, 100),  # unkeyed: sent every time
        AudioWindow(a[:6000], 100, "a"),
        AudioWindow(b, 100, "b"),
        AudioWindow(a[:9000], 100, "a"),  # the same utterance, longer: its gain is sent once
        AudioWindow(a[:2000], 100, "a"),  # a prefix already there: nothing sent
    ]
    sent = cache.sent
    _same(cache.signals(windows), windows)
    assert cache.sent - sent == 5000 + 7000 + (9000 - 4000)
    sent = cache.sent
    again = [AudioWindow(a[:9000], 100, "a"), AudioWindow(b[:100], 100, "b")]
    _same(cache.signals(again), again)
    assert cache.sent == sent


def test_least_recently_used_keys_are_dropped_past_the_capacity():
    first = audio_cache._FIRST
    cache = AudioCache(CPU, capacity=2 * first * 4)  # two first buffers
    x = _signal(4, first)
    cache.signals([AudioWindow(x, 100, "a")])
    cache.signals([AudioWindow(x, 100, "b")])
    cache.signals([AudioWindow(x[:10], 100, "a")])  # "a" used last: "b" goes first
    cache.signals([AudioWindow(x, 100, "c")])
    assert len(cache) == 2 and cache.bytes == 2 * first * 4
    sent = cache.sent
    cache.signals([AudioWindow(x, 100, "a")])
    assert cache.sent == sent  # kept
    windows = [AudioWindow(x, 100, "b")]
    _same(cache.signals(windows), windows)
    assert cache.sent == sent + first  # dropped: sent whole again
    # keys of one call stay even past the capacity
    many = [AudioWindow(x, 100, k) for k in "defg"]
    _same(cache.signals(many), many)
    assert {"d", "e", "f", "g"} <= set(cache._kept)


def test_window_mels_through_the_cache_equal_the_hosts():
    """An utterance's partials decoded through the cache, beside an unkeyed window and a second utterance: the
    same log-mels as made from each window's samples alone."""
    whisper = SimpleNamespace(model=SimpleNamespace(dims=SimpleNamespace(n_audio_ctx=1500, n_mels=80)))
    engine = SimpleNamespace(runner=SimpleNamespace(device=CPU))
    service = LiveService(whisper, engine, None, LiveOptions(short_windows=True))
    x, y = _signal(5, 16000 * 31) * 0.1, _signal(6, 16000 * 5) * 0.1
    cache = AudioCache(CPU)
    for seconds in (0.3, 0.9, 1.0, 2.1, 4.3, 5.0, 12.0, 31.0):
        n = int(16000 * seconds)
        windows = [
            service.audio_window(x[:n], "x"),
            service.audio_window(y[: min(n, len(y))], "y"),
            service.audio_window(x[n // 2 : n]),
        ]
        assert (windows[0].key is None) == (n > 480000)  # past the model's window it slides: not a prefix
        for got, want in zip(
            window_mels(windows, 80, CPU, cache), window_mels(windows, 80, CPU), strict=True
        ):
            torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_an_utterances_last_window_frees_its_audio():
    """A final decode's window (``last``) gets its audio like any other, then its key's buffer is dropped; a late
    window of that key (a cancelled partial admitted after it) sends its audio again."""
    x = _signal(6, 40000)
    cache = AudioCache(CPU)
    cache.signals([AudioWindow(x[:16000], 200, key="a"), AudioWindow(x[:5000], 200, key="b")])
    held = cache.bytes
    windows = [AudioWindow(x[:24000], 200, key="a", last=True)]
    sent = cache.sent
    _same(cache.signals(windows), windows)
    assert cache.sent - sent == 8000
    assert len(cache) == 1 and cache.bytes < held
    late = [AudioWindow(x[:20000], 200, key="a")]
    sent = cache.sent
    _same(cache.signals(late), late)
    assert cache.sent - sent == 20000
