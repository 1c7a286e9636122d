"""Hotword biasing: the trie bias itself (exact, on token ids), its effect on a real decode, and, with the
trained demo model, that a biased word that sounds close replaces what the model heard."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import TINY
from tests.support import decisive_model
from voxserve.api import DEMO_MODEL_DIR
from voxserve.audio.features import log_mel_spectrogram, pad_or_trim
from voxserve.decoding.decode import WindowDecoder
from voxserve.decoding.hotwords import Hotword, HotwordBias, HotwordDecoder, HotwordTrie
from voxserve.decoding.options import DecodingOptions, OptionsError


def test_bias_follows_the_trie(tokenizer):
    ids = tokenizer.encode(" voxserve rocks")
    assert len(ids) >= 3
    trie = HotwordTrie([Hotword("voxserve rocks", 2.5)], tokenizer)
    bias = HotwordBias(trie, sample_begin=1)
    v = 51865
    # nothing sampled yet: the phrase's first token (in each spelling) gets the weight, nothing else does
    b = bias.bias(torch.tensor([[7]]), v)[0]
    assert b[ids[0]] == 2.5 and b[ids[1]] == 0
    firsts = {
        tokenizer.encode(t)[0]
        for t in (" voxserve rocks", "voxserve rocks", " Voxserve rocks", "Voxserve rocks")
    }
    assert set(b.nonzero().flatten().tolist()) == firsts
    # after the first k tokens, the (k+1)-th is boosted too; a row elsewhere gets only the first tokens
    rows = torch.tensor([[7, *ids[:2]], [7, 11, 12]])
    b = bias.bias(rows, v)
    assert b[0, ids[2]] == 2.5 and b[1, ids[2]] == 0
    assert b[0].nonzero().flatten().tolist() == [ids[2]]
    assert b[1, ids[0]] == 2.5


def test_weights_are_checked():
    with pytest.raises(OptionsError):
        Hotword("x", 0)
    with pytest.raises(OptionsError):
        Hotword("   ")
    with pytest.raises(OptionsError, match="at most 200 characters"):
        Hotword("seriousness law " * 20)
    Hotword("x" * 200)


def test_a_strong_hotword_steers_a_decode(tokenizer):
    model = decisive_model(TINY, tokenizer, std=0.2, eot_boost=2.0)
    mel = pad_or_trim(log_mel_spectrogram(torch.zeros(16000), 80, padding=0), 3000)
    options = DecodingOptions(language="en", without_timestamps=True, sample_len=20)
    tok = tokenizer.with_options(language="en", task="transcribe")
    plain = WindowDecoder(model, tok, options).decode(mel)[0]
    biased = HotwordDecoder(model, tok, options, [Hotword("voxserve", 20.0)]).decode(mel)[0]
    assert "voxserve" not in plain.text.lower()
    assert "voxserve" in biased.text.lower()


@pytest.mark.slow
@pytest.mark.skipif(
    not DEMO_MODEL_DIR.is_dir(), reason="needs the trained demo model (voxserve/assets/demo-model)"
)
def test_hotword_corrects_what_the_demo_model_mishears():
    """The demo model (9.3 % held-out WER) mishears "Our new product is called Brightwave Turbo." as "Our new
    protoplasm by twelve-gauge ear."; with the phrase "new product is called" as a hotword at the default weight it
    writes those words. The case was found by trying ten sentences with names and product words on this model;
    the rare names themselves (Kowalski, Quetzalcoatl) were not rescued at weights 2, 4 or 8."""
    from voxserve.api import load_model
    from voxserve.metrics.wer import item_errors
    from voxserve.train.synth import speak

    sentence = "Our new product is called Brightwave Turbo."
    model = load_model("default", device="cpu")
    tok = model.tokenizer.with_options(language="en", task="transcribe")
    audio = torch.from_numpy(speak(sentence))
    mel = pad_or_trim(log_mel_spectrogram(audio, model.model.dims.n_mels, padding=0), 3000)
    options = DecodingOptions(language="en")
    plain = WindowDecoder(model.model, tok, options).decode(mel)[0].text
    biased = HotwordDecoder(model.model, tok, options, [Hotword("new product is called")]).decode(mel)[0].text
    assert "product is called" not in plain.lower()
    assert "new product is called" in biased.lower()
    assert item_errors(sentence, biased).rate < item_errors(sentence, plain).rate, (plain, biased)
