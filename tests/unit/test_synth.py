"""Synthetic speech data: corpus handling, augmentation, and a tiny espeak-ng dataset end to end."""

from __future__ import annotations

import io
import json
import shutil
import warnings
import wave

import numpy as np
import pytest
import torch

from voxserve.cli import synth as synth_cli
from voxserve.train.augment import (
    Augmentation,
    add_noise,
    colored_noise,
    mulaw_encode,
    mulaw_expand,
    speech_bounds,
    telephone,
)
from voxserve.train.corpus import CorpusError, clean_sentence, read_corpus, split_holdout
from voxserve.train.espeak import read_wav_bytes
from voxserve.train.manifest import ManifestError, read_manifest, read_wav_int16

HAVE_ESPEAK = shutil.which("espeak-ng") is not None
needs_espeak = pytest.mark.skipif(not HAVE_ESPEAK, reason="espeak-ng is not installed (make system-packages)")


# ----------------------------------------------------------------------------------------------- corpus


def test_corpus_formats(tmp_path):
    lj = tmp_path / "metadata.csv"
    lj.write_text("LJ1|In 1455, he|In fourteen fifty-five, he\nLJ2|Two|Two\n", encoding="utf-8")
    assert read_corpus(lj) == ["In fourteen fifty-five, he", "Two"]
    plain = tmp_path / "lines.txt"
    plain.write_text("first line\n\nsecond | with a bar\n", encoding="utf-8")
    assert read_corpus(plain) == ["first line", "second | with a bar"]
    with pytest.raises(CorpusError, match="not found"):
        read_corpus(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("\n", encoding="utf-8")
    with pytest.raises(CorpusError, match="empty"):
        read_corpus(tmp_path / "empty.txt")


def test_clean_sentence_rejects_unspeakable_text():
    assert clean_sentence("  Hello,\tworld.  ") == "Hello, world."
    for bad in ("", "It costs $5", "room 101", "He [Oswald] said", "x" * 300):
        assert clean_sentence(bad) is None


def test_holdout_is_disjoint_seeded_and_dedupes_by_normalised_text():
    sentences = [f"Sentence number {w}." for w in "one two three four five six seven eight nine ten".split()]
    sentences.append("sentence NUMBER one")  # the same words as the first: one sentence, not two
    train, held = split_holdout(sentences, holdout=3, seed=1)
    assert len(held) == 3 and len(train) == 7
    assert not {s.lower().strip(".") for s in train} & {s.lower().strip(".") for s in held}
    assert split_holdout(sentences, holdout=3, seed=1) == (train, held)
    assert split_holdout(sentences, holdout_frac=0.2, seed=0)[1].__len__() == 2
    with pytest.raises(ValueError):
        split_holdout(sentences, holdout=50)


# --------------------------------------------------------------------------------------------- augment


def test_mulaw_matches_the_reference_codec():
    # Hand-derived codes: 0 -> 0xFF, -1 -> 0x7E (sign, segment 0), full scale -> 0x80 / 0x00.
    codes = mulaw_encode(np.array([0, -1, 32767, -32768], dtype=np.int16)).tolist()
    assert codes == [0xFF, 0x7E, 0x80, 0x00]
    assert mulaw_expand(torch.tensor([0xFF, 0x80, 0x00], dtype=torch.uint8)).tolist() == [0, 32124, -32124]
    pcm = np.arange(-32768, 32768, dtype=np.int16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import audioop
        except ImportError:
            audioop = None
    if audioop is not None:  # the standard library's codec (Python <= 3.12) as an independent reference
        ref = np.frombuffer(audioop.lin2ulaw(pcm.tobytes(), 2), dtype=np.uint8)
        assert np.array_equal(mulaw_encode(pcm).numpy(), ref)
        back = np.frombuffer(audioop.ulaw2lin(ref.tobytes(), 2), dtype=np.int16)
        assert np.array_equal(mulaw_expand(torch.from_numpy(ref.copy())).numpy(), back)
    # The round trip keeps the sign and stays within the coarsest step (1/16 of the segment's range).
    rt = mulaw_expand(mulaw_encode(pcm)).numpy().astype(int)
    assert np.all(np.sign(rt) * np.sign(pcm) >= 0) and np.abs(rt - pcm).max() <= 1024


def test_noise_hits_the_requested_snr_and_is_seeded():
    g = torch.Generator().manual_seed(0)
    x = 0.3 * torch.sin(torch.arange(32000) * 0.05)[None]
    for kind in ("white", "pink", "brown"):
        noise = colored_noise((1, 32000), kind, g, torch.device("cpu"))
        y = add_noise(x, torch.tensor([12.0]), noise)
        snr = 10 * torch.log10(x.square().mean() / (y - x).square().mean())
        assert abs(float(snr) - 12.0) < 0.05, kind
    a = colored_noise((2, 100), "pink", torch.Generator().manual_seed(5), torch.device("cpu"))
    b = colored_noise((2, 100), "pink", torch.Generator().manual_seed(5), torch.device("cpu"))
    assert torch.equal(a, b)


def test_telephone_band_limits_and_keeps_length():
    t = torch.arange(16000) / 16000
    x = (0.3 * torch.sin(2 * torch.pi * 1000 * t) + 0.3 * torch.sin(2 * torch.pi * 6000 * t))[None]
    y = telephone(x)
    assert y.shape == x.shape
    spectrum = torch.fft.rfft(y[0]).abs()
    # 1 kHz survives (within mu-law's noise), 6 kHz is above the 4 kHz telephone band and is gone.
    assert spectrum[1000] > 0.7 * torch.fft.rfft(x[0]).abs()[1000]
    assert spectrum[6000] < 0.01 * spectrum[1000]


def test_augmentation_reports_what_it_did():
    aug = Augmentation(noise_prob=1.0, telephone_prob=1.0, gain_prob=1.0)
    x = 0.2 * torch.randn(3, 8000, generator=torch.Generator().manual_seed(1))
    y, applied = aug(x, torch.Generator().manual_seed(2))
    assert y.shape == x.shape and not torch.equal(x, y) and float(y.abs().max()) <= 1.0
    assert all(
        a[0] == "telephone" and a[1].startswith("noise:") and a[2].startswith("gain:") for a in applied
    )
    y2, _ = aug(x, torch.Generator().manual_seed(2))
    assert torch.equal(y, y2)
    with pytest.raises(ValueError):
        Augmentation(noise_prob=1.5)


def test_speech_bounds():
    x = np.zeros(16000, np.float32)
    x[4000:9000] = 0.5
    start, end = speech_bounds(x)  # frame-granular: 10 ms frames of 160 samples
    assert start == 4000 and 9000 <= end <= 9000 + 160
    assert speech_bounds(np.zeros(1000, np.float32)) == (0, 0)


def test_wav_stream_with_placeholder_length():
    # espeak-ng writes its WAV to a pipe with a placeholder frame count; the samples are what follows.
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(22050)
        w.writeframes(np.arange(100, dtype="<i2").tobytes())
    data = bytearray(buf.getvalue())
    data[40:44] = (0x7FFFFFFF).to_bytes(4, "little")  # the data chunk's size, as espeak-ng leaves it
    r = read_wav_bytes(bytes(data))
    assert r.sample_rate == 22050 and r.samples.tolist() == list(range(100))


# ----------------------------------------------------------------------------------------- espeak-ng


def _synth(tmp_path, name, *extra):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The cat sat on the mat.\nA quick test of speech.\nNumbers are spoken in words.\n")
    out = tmp_path / name
    parser = __import__("argparse").ArgumentParser()
    synth_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(
        ["synth", "--text", str(corpus), "--out", str(out), "--voices", "en-us,en-gb-x-rp", "--variants",
         "plain,f2", "--holdout", "1", "--workers", "1", "--seed", "3", "--quiet", *extra]
    )  # fmt: skip
    assert args.func(args) == 0
    return out


@needs_espeak
def test_synth_makes_a_tiny_dataset(tmp_path):
    out = _synth(tmp_path, "a", "--variants-per-sentence", "2", "--noise-prob", "0.5")
    train, held = read_manifest(out / "train.jsonl"), read_manifest(out / "heldout.jsonl")
    assert len(train) == 4 and len(held) == 1  # 2 training sentences x 2 renderings, 1 held out
    assert {u.text for u in train}.isdisjoint({u.text for u in held})
    for u in train + held:
        assert u.voice.split("+")[0] in ("en-us", "en-gb-x-rp") and u.language == "en"
        with wave.open(str(u.audio)) as w:
            assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
            assert abs(w.getnframes() / 16000 - u.duration) < 1e-3
        assert 0.05 <= u.speech_start - 0.0 <= 0.5 + 0.011  # the kept pad, to one 10 ms frame
        assert u.speech_start < u.speech_end <= u.duration
        x = read_wav_int16(u.audio)
        lead = x[: int(u.speech_start * 16000) - 160]
        if not any(a.startswith("noise") for a in json.loads(_row(out, u)).get("augment", [])):
            assert np.abs(lead).max() < 50  # silence before the speech
        assert np.abs(x).max() > 3000  # and speech after it
    summary = json.loads((out / "synth.json").read_text())
    assert summary["utterances"] == {"train": 4, "heldout": 1} and summary["failures"] == 0
    # The same seed gives the same dataset.
    again = _synth(tmp_path, "b", "--variants-per-sentence", "2", "--noise-prob", "0.5")
    assert (again / "train.jsonl").read_text() == (out / "train.jsonl").read_text()


def _row(out, u):
    for line in (out / "train.jsonl").read_text().splitlines() + (
        out / "heldout.jsonl"
    ).read_text().splitlines():
        if json.loads(line)["audio"] == u.id:
            return line
    raise AssertionError(u.id)


@needs_espeak
def test_speak_returns_trimmed_16k_speech():
    from voxserve.train.synth import speak

    x = speak("Hello there.", pad=0.2)
    assert x.dtype == np.float32 and 0.6 < len(x) / 16000 < 3.0
    assert np.abs(x[:3000]).max() == 0 and np.abs(x).max() > 0.1  # 0.2 s of silence, then speech


@needs_espeak
def test_synth_rejects_unknown_voices(tmp_path, capsys):
    parser = __import__("argparse").ArgumentParser()
    synth_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(
        [
            "synth",
            "--extra-generated",
            "3",
            "--out",
            str(tmp_path / "x"),
            "--variants",
            "nosuchvariant",
            "--quiet",
        ]
    )
    assert args.func(args) == 2
    assert "unknown espeak-ng voice variants" in capsys.readouterr().err


def test_manifest_errors_name_the_line(tmp_path):
    m = tmp_path / "m.jsonl"
    m.write_text('{"audio": "a.wav", "text": "hi"}\nnot json\n', encoding="utf-8")
    with pytest.raises(ManifestError, match=r"m.jsonl:1: audio file not found"):
        read_manifest(m)
    m.write_text('{"audio": "a.wav", "text": "hi", "speech_start": 1.0}\n', encoding="utf-8")
    with pytest.raises(ManifestError, match="both speech_start and speech_end"):
        read_manifest(m, check_files=False)
    m.write_text('{"audio": "a.wav"}\n', encoding="utf-8")
    with pytest.raises(ManifestError, match="missing or empty 'text'"):
        read_manifest(m, check_files=False)


def test_unpacked_espeak_libraries_reach_only_espeak(monkeypatch):
    from voxserve.train.espeak import espeak_env

    monkeypatch.delenv("ESPEAK_NG_LIBRARY_PATH", raising=False)
    assert espeak_env() is None  # the processes simply inherit our environment
    monkeypatch.setenv("ESPEAK_NG_LIBRARY_PATH", "/opt/espeak/lib")
    monkeypatch.setenv("LD_LIBRARY_PATH", "/usr/local/cuda/lib64")
    env = espeak_env()
    assert env["LD_LIBRARY_PATH"] == "/opt/espeak/lib:/usr/local/cuda/lib64"
    import os

    assert os.environ["LD_LIBRARY_PATH"] == "/usr/local/cuda/lib64"  # this process is untouched


@needs_espeak
def test_synth_adds_recombined_training_text(tmp_path):
    from voxserve.metrics.normalize import normalize_english

    out = _synth(tmp_path, "mixed", "--extra-mixed", "4")
    train, held = read_manifest(out / "train.jsonl"), read_manifest(out / "heldout.jsonl")
    corpus = {"The cat sat on the mat.", "A quick test of speech.", "Numbers are spoken in words."}
    plain = _synth(tmp_path, "plain")  # the same split without them: the same held-out sentence
    assert [u.text for u in held] == [u.text for u in read_manifest(plain / "heldout.jsonl")]
    mixed = [u.text for u in train if u.text not in corpus]
    assert len(train) == 6 and len(mixed) == 4  # two corpus sentences, one rendering each, and four new ones
    words = {w for u in train if u.text in corpus for w in normalize_english(u.text).split()}
    for text in mixed:  # made of the training sentences' words only, never the held-out one
        assert set(normalize_english(text).split()) <= words, text
        assert normalize_english(text) != normalize_english(held[0].text)
