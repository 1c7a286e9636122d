"""The live page end to end in headless Chromium: a WAV file is the microphone, the page streams it over the
realtime WebSocket and shows the text. With the demo model the page must show the spoken sentence."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("onnxruntime")
pytest.importorskip("websockets")

from tests.server.browser import Browser, chromium_path  # noqa: E402
from tests.server.conftest import LiveServer  # noqa: E402
from voxserve.api import DEMO_MODEL_DIR  # noqa: E402
from voxserve.server.app import create_app  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(chromium_path() is None, reason="chromium is not installed (make system-packages)"),
]

ITEMS = "Array.from(document.querySelectorAll('#transcript .item')).map(p => [p.dataset.final || '', p.textContent])"


def _speech_wav(tmp_path, text: str):
    from voxserve.train.espeak import EspeakError
    from voxserve.train.synth import speak, write_wav

    try:
        x = speak(text)
    except EspeakError as e:
        pytest.skip(f"espeak-ng unavailable: {e}")
    # silence first (the page connects), then the sentence, then enough silence for the VAD to end it
    x = np.concatenate([np.zeros(16000, np.float32), x, np.zeros(32000, np.float32)])
    path = tmp_path / "mic.wav"
    write_wav(path, x)
    return path, len(x) / 16000


def _run_page(app, wav, seconds: float, profile) -> list[list[str]]:
    with LiveServer(app) as server, Browser(server.url + "/?autostart=mic", wav, profile) as browser:
        done = browser.wait_for("document.body.dataset.completed", timeout=seconds + 30)
        items = browser.evaluate(ITEMS)
        errors = browser.evaluate("document.getElementById('errors').textContent")
    assert not errors, errors
    assert done, f"no completed item on the page; items: {items}"
    return items


def test_page_streams_the_microphone(make_settings, tmp_path):
    """Random tiny model: the page's microphone audio reaches the server, partials arrive while it speaks,
    a completed item appears; committed text is black and provisional text grey."""
    wav, seconds = _speech_wav(tmp_path, "the quick brown fox jumps over the lazy dog")
    app = create_app(make_settings(preload=False))
    with (
        LiveServer(app) as server,
        Browser(server.url + "/?autostart=mic", wav, tmp_path / "profile") as browser,
    ):
        done = browser.wait_for("document.body.dataset.completed", timeout=seconds + 30)
        items = browser.evaluate(ITEMS)
        deltas = browser.evaluate("document.body.dataset.deltas")
        colours = browser.evaluate(
            "['.committed', '.partial'].map(s => getComputedStyle(document.querySelector(s)).color)"
        )
        errors = browser.evaluate("document.getElementById('errors').textContent")
    assert not errors, errors
    assert done and items and items[0][0] == "1", items
    assert deltas and int(deltas) >= 1
    assert colours == ["rgb(0, 0, 0)", "rgb(153, 153, 153)"]


def test_page_sends_a_chosen_file(make_settings, tmp_path):
    """File upload: the page decodes the file, streams it at real-time pace and shows the completed item."""
    from voxserve.train.synth import write_wav

    wav, seconds = _speech_wav(tmp_path, "one two three four")
    silent = tmp_path / "silent.wav"
    write_wav(silent, np.zeros(16000, np.float32))  # the microphone stays unused
    app = create_app(make_settings(preload=False))
    with LiveServer(app) as server, Browser(server.url + "/", silent, tmp_path / "profile") as browser:
        assert browser.wait_for("document.getElementById('file') !== null", timeout=30)
        browser.choose_file("#file", wav)
        done = browser.wait_for("document.body.dataset.completed", timeout=seconds + 30)
        status = browser.evaluate("document.getElementById('status').textContent")
        errors = browser.evaluate("document.getElementById('errors').textContent")
    assert not errors, errors
    assert done, f"no completed item; status {status!r}"


@pytest.mark.skipif(
    not DEMO_MODEL_DIR.is_dir(), reason=f"the demo model is not trained yet ({DEMO_MODEL_DIR})"
)
def test_page_shows_the_demo_model_transcript(make_settings, tmp_path):
    from voxserve.metrics.wer import item_errors

    # A sentence of the demo model's training text (its card: it recognises that style, not free English).
    sentence = "the New Orleans branch of the Fair Play for Cuba Committee."
    wav, seconds = _speech_wav(tmp_path, sentence)
    settings = make_settings(models={"default": "default"}, default_model="default", preload=False)
    items = _run_page(create_app(settings), wav, seconds, tmp_path / "profile")
    text = " ".join(t for final, t in items if final)
    counts = item_errors(sentence, text)
    wer = counts.errors / counts.reference_length
    assert wer <= 0.2, f"page shows {text!r} for {sentence!r} (WER {wer:.2f})"
