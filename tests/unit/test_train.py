"""The training loop on a tiny manifest: targets, batches, learning, exact resume, export that loads."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from voxserve.cli import train as train_cli
from voxserve.model.load import load_checkpoint
from voxserve.model.whisper import Whisper
from voxserve.tokenizer import Tokenizer
from voxserve.train.data import TrainingSet, window_samples
from voxserve.train.evaluate import evaluate
from voxserve.train.export import export_hf
from voxserve.train.manifest import Utterance, load_all_audio, read_manifest, write_manifest
from voxserve.train.presets import PRESETS, parse_dims
from voxserve.train.synth import write_wav
from voxserve.train.targets import IGNORE, Segment, collate, target_tokens
from voxserve.train.trainer import TrainConfig, Trainer, TrainError, init_for_training, learning_rate

MICRO = PRESETS["micro"]  # TINY's widths with a 5 s window, so CPU steps are fast
TEXTS = ["the cat sat on the mat", "seven dollars and five cents", "call me at nine", "good morning to you"]


@pytest.fixture(scope="module")
def tokenizer(shared):
    return Tokenizer.from_tiktoken(shared / "whisper-assets" / "multilingual.tiktoken")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """Four 1-2 s "utterances": distinct chirps, each with half a second of silence around it."""
    root = tmp_path_factory.mktemp("tiny-set")
    rng = np.random.default_rng(0)
    rows = []
    for i, text in enumerate(TEXTS):
        n = 16000 + 4000 * i
        t = np.arange(n) / 16000
        f0 = 200 + 150 * i
        speech = 0.3 * np.sin(2 * np.pi * (f0 * t + 80 * i * t**2)) + 0.01 * rng.standard_normal(n)
        audio = np.concatenate([np.zeros(8000), speech, np.zeros(8000)]).astype(np.float32)
        write_wav(root / f"u{i}.wav", audio)
        rows.append(
            {"audio": f"u{i}.wav", "text": text, "language": "en", "duration": len(audio) / 16000,
             "speech_start": 0.5, "speech_end": 0.5 + n / 16000}
        )  # fmt: skip
    write_manifest(root / "train.jsonl", rows)
    write_manifest(root / "heldout.jsonl", rows[:2])
    return root


def _train_set(manifest, tokenizer, **kw):
    items = read_manifest(manifest / "train.jsonl")
    audio = load_all_audio(items, progress=False)
    kw = {"n_mels": 80, "max_tokens": 448, "window_samples": window_samples(MICRO.n_audio_ctx),
          "device": torch.device("cpu"), **kw}  # fmt: skip
    return TrainingSet(items, audio, tokenizer, **kw)


def test_targets(tokenizer):
    tok = tokenizer
    plain = target_tokens(tok, "en", [Segment(0.5, 1.5, "hello world")], timestamps=False)
    sot = tok.with_options(language="en", task="transcribe").sot_sequence
    assert plain == [*sot, tok.no_timestamps, *tok.encode(" hello world"), tok.eot]
    timed = target_tokens(tok, "en", [Segment(0.5, 1.51, "a"), Segment(2.0, 2.0, "b")], timestamps=True)
    ts = tok.timestamp_begin
    # 0.5 s is step 25 and 1.51 s rounds to step 76; a zero-length segment still spans one step.
    assert timed == [
        *sot,
        ts + 25,
        *tok.encode(" a"),
        ts + 76,
        ts + 100,
        *tok.encode(" b"),
        ts + 101,
        tok.eot,
    ]
    inputs, labels = collate([[1, 2, 3], [4, 5]], pad=9)
    assert inputs.tolist() == [[1, 2], [4, 9]] and labels.tolist() == [[2, 3], [5, IGNORE]]
    with pytest.raises(ValueError):
        target_tokens(tok, "en", [], timestamps=False)


def test_batches_are_a_function_of_the_step(manifest, tokenizer):
    ts = _train_set(manifest, tokenizer, timestamps_prob=0.5, pack_prob=0.5, seed=4)
    a, b = ts.batch(3, 4), ts.batch(3, 4)
    assert torch.equal(a.mel, b.mel) and torch.equal(a.labels, b.labels)
    assert a.mel.shape == (4, 80, 2 * MICRO.n_audio_ctx)
    assert not torch.equal(ts.batch(4, 4).labels, a.labels)
    # Windows are assembled from cached encodings; they match the targets module's definition.
    rng = np.random.default_rng(0)
    for first in range(len(ts)):
        for _ in range(5):
            placed, tokens = ts.window_layout(first, rng)
            timed = any(t >= tokenizer.timestamp_begin for t in tokens)
            assert tokens == target_tokens(tokenizer, "en", ts.segments(placed), timestamps=timed)
    # Over many batches, packing puts several utterances (each with its timestamp pair) in one window.
    packed = [ts.batch(m, 4) for m in range(10)]
    assert max(b.n_utterances for b in packed) > 4
    for b in packed:
        for row in b.labels.tolist():
            stamps = [t for t in row if t >= tokenizer.timestamp_begin]
            assert stamps == sorted(stamps) and len(stamps) % 2 == 0
            assert all((t - tokenizer.timestamp_begin) * 0.02 <= 5.0 for t in stamps)  # inside the window


def test_overlong_utterances_are_skipped(manifest, tokenizer):
    ts = _train_set(manifest, tokenizer, window_samples=2 * 16000)  # a 2 s window fits only the first
    assert len(ts) == 1 and len(ts.skipped) == 3


def test_learning_rate_schedule():
    cfg = TrainConfig(steps=100, lr=1e-3, warmup=10, min_lr_ratio=0.1)
    assert learning_rate(0, cfg) == pytest.approx(1e-4)
    assert learning_rate(9, cfg) == pytest.approx(1e-3)
    assert learning_rate(55, cfg) == pytest.approx(0.55e-3)  # half way down the cosine
    assert learning_rate(100, cfg) == pytest.approx(1e-4)
    with pytest.raises(TrainError):
        TrainConfig(batch_size=0)


def test_schedule_fits_a_time_budget(manifest, tokenizer, tmp_path, monkeypatch):
    import voxserve.train.trainer as trainer_module

    trainer = _trainer(manifest, tokenizer, tmp_path / "budget", steps=10_000, max_minutes=10.0)
    clock = [1000.0]
    monkeypatch.setattr(trainer_module.time, "monotonic", lambda: clock[0])
    start = clock[0]
    trainer.step, clock[0] = 40, start + 40  # too few steps timed yet: the plan stays
    trainer._fit_schedule_to_budget(start, 0)
    assert trainer.planned_steps == 10_000
    trainer.step, clock[0] = 60, start + 60  # one step a second, 540 s left -> the cosine ends at step 600
    trainer._fit_schedule_to_budget(start, 0)
    assert trainer.planned_steps == 600
    assert trainer.state()["planned_steps"] == 600
    assert learning_rate(599, trainer.config, 600) < learning_rate(300, trainer.config, 600)

    kept = _trainer(
        manifest, tokenizer, tmp_path / "kept", steps=10_000, max_minutes=10.0, fit_schedule=False
    )
    kept.step = 60
    kept._fit_schedule_to_budget(start, 0)  # a run split over sessions keeps its cosine for all its steps
    assert kept.planned_steps == 10_000


def _trainer(manifest, tokenizer, out, steps, **cfg):
    torch.manual_seed(0)
    model = init_for_training(Whisper(MICRO), seed=0).train()
    config = TrainConfig(steps=steps, batch_size=2, warmup=2, lr=3e-3, eval_every=0, save_every=0, log_every=1,
                         **cfg)  # fmt: skip
    ts = _train_set(manifest, tokenizer, timestamps_prob=0.5, seed=0)
    return Trainer(model, tokenizer, ts, config, out)


def _audio(ts):
    return [ts.audio[o : o + n].numpy() for o, n in zip(ts.offsets, ts.lengths, strict=True)]


@pytest.mark.slow
def test_loss_falls_when_overfitting_two_utterances(manifest, tokenizer, tmp_path):
    items = read_manifest(manifest / "train.jsonl")[:2]
    torch.manual_seed(0)
    model = init_for_training(Whisper(MICRO), seed=0).train()
    ts = TrainingSet(items, load_all_audio(items, progress=False), tokenizer, n_mels=80, max_tokens=448,
                     window_samples=window_samples(MICRO.n_audio_ctx), device=torch.device("cpu"))  # fmt: skip
    config = TrainConfig(
        steps=24, batch_size=2, warmup=3, lr=1e-2, min_lr_ratio=1.0, eval_every=0, save_every=0
    )
    trainer = Trainer(model, tokenizer, ts, config, tmp_path / "run")
    losses = [float(trainer.train_step()[0]) for _ in range(24)]
    assert losses[0] > 9.0  # about ln(51865) = 10.86 at the start
    # Memorising two transcripts: about 1.4 after 15 steps and 0.5 after 21 when this test was written.
    assert np.mean(losses[-3:]) < 0.15 * losses[0], losses
    # What was learnt comes back through the library's batched decoder: at this point at least one of the two
    # transcripts is reproduced word for word (both are, some steps later).
    report = evaluate(trainer.model, tokenizer, items, _audio(ts))
    assert [r["reference"] for r in report.rows] == [u.text for u in items]
    assert min(r["rate"] for r in report.rows) == 0.0, report.rows


@pytest.mark.slow
def test_resume_continues_exactly(manifest, tokenizer, tmp_path):
    full = _trainer(manifest, tokenizer, tmp_path / "full", steps=3)
    for _ in range(3):
        full.train_step()

    first = _trainer(manifest, tokenizer, tmp_path / "split", steps=3)
    first.train_step()
    first.save()
    second = _trainer(manifest, tokenizer, tmp_path / "split", steps=3)  # a fresh process would start so
    assert second.resume() and second.step == 1
    for _ in range(2):
        second.train_step()

    for (name, a), b in zip(full.model.state_dict().items(), second.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    sa, sb = full.optimizer.state_dict()["state"], second.optimizer.state_dict()["state"]
    assert all(torch.equal(sa[k]["exp_avg_sq"], sb[k]["exp_avg_sq"]) for k in sa)

    other = Trainer(
        second.model, tokenizer, second.train_set, TrainConfig(steps=3, batch_size=3), tmp_path / "split"
    )
    with pytest.raises(TrainError, match="batch_size=2"):
        other.resume()


def test_export_loads_in_voxserve_and_transformers(tokenizer, tmp_path):
    transformers = pytest.importorskip("transformers")
    model = init_for_training(Whisper(MICRO), seed=1).eval()
    out = export_hf(model, tokenizer, tmp_path / "final", dtype=torch.float16, extra={"note": "test"})
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "float16"
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["no_timestamps_token_id"] == tokenizer.no_timestamps and gen["lang_to_id"]["<|en|>"] == 50259
    assert gen["alignment_heads"] and gen["suppress_tokens"] and gen["is_multilingual"]

    loaded, info = load_checkpoint(out, dtype="float32")
    assert loaded.dtype == torch.float32 and loaded.dims == MICRO
    assert info.alignment_heads == tuple(map(tuple, gen["alignment_heads"]))
    half = init_for_training(Whisper(MICRO), seed=1).half().float()  # what the fp16 file holds
    mel = torch.randn(1, 80, 2 * MICRO.n_audio_ctx)
    tokens = torch.tensor([[tokenizer.sot, 50259, tokenizer.transcribe, tokenizer.no_timestamps]])
    with torch.no_grad():
        ours = loaded.decoder.forward_full(tokens, loaded.encoder(mel))
        assert torch.allclose(ours, half.decoder.forward_full(tokens, half.encoder(mel)), atol=1e-5)
        hf = transformers.WhisperForConditionalGeneration.from_pretrained(
            out, torch_dtype=torch.float32
        ).eval()
        theirs = hf(input_features=mel, decoder_input_ids=tokens).logits
    assert torch.allclose(ours, theirs, atol=1e-3), (ours - theirs).abs().max()
    hf_tok = transformers.WhisperTokenizer.from_pretrained(out)
    assert hf_tok.encode(" hello world", add_special_tokens=False) == tokenizer.encode(" hello world")


def _cli(*argv):
    parser = argparse.ArgumentParser()
    train_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["train", *argv])
    return args.func(args)


@pytest.mark.slow
def test_train_command_end_to_end(manifest, tmp_path, capsys, multilingual_tiktoken):
    out = tmp_path / "run"
    code = _cli(
        "--train", str(manifest / "train.jsonl"), "--eval", str(manifest / "heldout.jsonl"), "--out", str(out),
        "--init-dims", "micro", "--tokenizer", str(multilingual_tiktoken), "--steps", "3", "--batch-size", "2",
        "--eval-every", "2", "--log-every", "1", "--pack-prob", "0.5", "--noise-prob", "0.5", "--quiet",
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    log = [json.loads(line) for line in (out / "train.log").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3]
    assert [r["step"] for r in log if "eval" in r] == [2, 3]
    assert log[-1]["end"] and log[-2]["eval"]["en"]["metric"] == "WER"
    model, _ = load_checkpoint(out / "final")
    assert model.dims == parse_dims("micro")
    assert "held-out: en: WER" in capsys.readouterr().out
    # Fine-tuning the result: the checkpoint's own tokenizer files are used.
    code = _cli("--train", str(manifest / "train.jsonl"), "--out", str(tmp_path / "ft"), "--init-from",
                str(out / "final"), "--steps", "1", "--batch-size", "1", "--quiet")  # fmt: skip
    assert code == 0 and (tmp_path / "ft" / "final" / "model.safetensors").is_file()


def test_train_command_reports_bad_input(manifest, tmp_path, capsys):
    assert (
        _cli("--train", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "r"), "--init-dims", "micro")
        == 1
    )
    assert "manifest not found" in capsys.readouterr().err
    assert (
        _cli("--train", str(manifest / "train.jsonl"), "--out", str(tmp_path / "r"), "--init-dims", "d=3")
        == 1
    )
    assert "dims spec 'd=3' is missing" in capsys.readouterr().err


def test_eval_command(manifest, tokenizer, tmp_path, capsys):
    from voxserve.cli import eval as eval_cli

    model_dir = export_hf(init_for_training(Whisper(MICRO), seed=2), tokenizer, tmp_path / "m")

    def run(*argv):
        parser = argparse.ArgumentParser()
        eval_cli.add_parser(parser.add_subparsers())
        args = parser.parse_args(["eval", "--model", str(model_dir), "--quiet", *argv])
        return args.func(args)

    per_item = tmp_path / "items.jsonl"
    assert (
        run("--manifest", str(manifest / "heldout.jsonl"), "--per-item", str(per_item), "--device", "cpu")
        == 0
    )
    out = capsys.readouterr().out
    assert "en: WER" in out and "over 2 items" in out and "S=" in out and "N=11" in out
    rows = [json.loads(line) for line in per_item.read_text().splitlines()]
    assert [r["reference"] for r in rows] == TEXTS[:2] and all("hypothesis" in r for r in rows)
    # An utterance longer than the model's window is a clear error, not a silent truncation.
    long_manifest = tmp_path / "long.jsonl"
    write_wav(tmp_path / "long.wav", np.zeros(16000 * 6, np.float32))
    long_manifest.write_text(json.dumps({"audio": "long.wav", "text": "x", "language": "en"}) + "\n")
    assert run("--manifest", str(long_manifest)) == 1
    assert "longer than one 5 s window" in capsys.readouterr().err


def test_nemo_style_manifest(tmp_path):
    (tmp_path / "m.json").write_text(
        '{"audio_filepath": "audio/a.wav", "text": "hi there", "duration": 1.5}\n'
    )
    u = read_manifest(tmp_path / "m.json", check_files=False)[0]
    assert (u.audio, u.text, u.language, u.duration) == (tmp_path / "audio" / "a.wav", "hi there", "en", 1.5)


def test_utterance_roundtrip(tmp_path):
    u = Utterance(
        audio=tmp_path / "a.wav", text="hi", language="en", duration=1.0, speech_start=0.1, speech_end=0.9
    )
    write_manifest(tmp_path / "m.jsonl", [u])
    back = read_manifest(tmp_path / "m.jsonl", check_files=False)[0]
    assert (back.audio, back.text, back.speech_start, back.speech_end) == (u.audio, "hi", 0.1, 0.9)


def test_char_targets():
    from voxserve.train.ctc import ALPHABET, char_targets

    text = "Hello,  World! It's 9 o'clock — ok. "
    decoded = "".join(ALPHABET[i - 1] for i in char_targets(text))
    assert decoded == "hello world it's 9 o'clock ok"
    assert char_targets("¿¡...") == []


def test_batches_carry_the_characters_of_their_windows(manifest, tokenizer):
    from voxserve.train.ctc import ALPHABET

    ts = _train_set(manifest, tokenizer, pack_prob=0.7, seed=1)
    for m in range(6):
        batch = ts.batch(m, 3)
        rng = np.random.default_rng([ts.seed, m])
        layouts = [ts.window_layout(ts._primary(m * 3 + b), rng)[0] for b in range(3)]
        rows = torch.split(batch.chars, batch.char_lengths.tolist())
        for placed, row in zip(layouts, rows, strict=True):
            spoken = " ".join(ts.items[i].text for i, _ in placed)
            assert "".join(ALPHABET[i - 1] for i in row.tolist()) == spoken


@pytest.mark.slow
def test_ctc_head_learns_and_resumes(manifest, tokenizer, tmp_path):
    """With a CTC weight the encoder gets its own loss: it falls from the start, the logged loss stays the
    decoder's cross entropy, and the head's state survives a resume (it is saved, never exported)."""
    ts = _train_set(manifest, tokenizer)
    config = TrainConfig(steps=30, batch_size=4, warmup=2, lr=3e-3, min_lr_ratio=1.0, eval_every=0,
                         save_every=0, ctc_weight=0.5)  # fmt: skip
    trainer = Trainer(init_for_training(Whisper(MICRO), seed=0), tokenizer, ts, config, tmp_path / "run")
    ctc = []
    for _ in range(12):
        before = float(trainer.ctc_total)
        ce = float(trainer.train_step()[0])
        ctc.append(float(trainer.ctc_total) - before)
    assert ce > 0.5 and np.mean(ctc[-3:]) < 0.7 * ctc[0], ctc
    trainer.save()
    again = Trainer(init_for_training(Whisper(MICRO), seed=1), tokenizer, ts, config, tmp_path / "run")
    assert again.resume() and again.step == 12
    for a, b in zip(trainer.ctc_head.parameters(), again.ctc_head.parameters(), strict=True):
        assert torch.equal(a, b)
    plain = Trainer(again.model, tokenizer, ts, TrainConfig(steps=30, batch_size=4), tmp_path / "run")
    with pytest.raises(TrainError, match="ctc_weight"):
        plain.resume()
    from safetensors import safe_open

    final = trainer.run(progress=False).final_dir
    with safe_open(str(final / "model.safetensors"), "pt") as f:
        assert not any("ctc" in k for k in f.keys())


# ------------------------------------------------------------------------------ regularisation


def test_spec_augment_masks_only_inside_the_audio_and_is_seeded():
    from voxserve.train.specaugment import SpecAugment

    mel = torch.randn(3, 80, 1000)
    filled = torch.tensor([1000, 300, 0])
    masks = SpecAugment(time_masks_per_s=1.0, time_width=0.2)  # 10 s of audio: about 10 masks of <= 20 frames
    a = masks(mel, filled, torch.Generator().manual_seed(1))
    assert torch.equal(a, masks(mel, filled, torch.Generator().manual_seed(1)))
    assert not torch.equal(a, masks(mel, filled, torch.Generator().manual_seed(2)))
    changed = (a != mel).any(1)  # [B, T]: time masks cover every mel bin of a frame
    assert torch.equal(changed, (a != mel).all(1))
    assert not changed[1, 300:].any() and not changed[2].any()  # never in the padding
    assert 20 <= int(changed[0].sum()) <= 300
    mean = (mel[0].sum() / mel[0].numel()).item()
    assert torch.allclose(a[0][:, changed[0]], torch.tensor(mean))
    bands = SpecAugment(freq_masks=2, freq_width=10)(mel, filled, torch.Generator().manual_seed(3))
    rows = (bands != mel).any(2)  # [B, n_mels]: frequency masks cover whole bands
    assert torch.equal(rows, (bands != mel).all(2)) and 0 < int(rows[0].sum()) <= 20
    assert not SpecAugment().active and SpecAugment()(mel, filled, torch.Generator()) is mel
    with pytest.raises(ValueError):
        SpecAugment(time_masks_per_s=-1)


def test_spec_augment_in_batches_keeps_them_a_function_of_the_step(manifest, tokenizer):
    from voxserve.train.specaugment import SpecAugment

    plain = _train_set(manifest, tokenizer, timestamps_prob=0.5, pack_prob=0.5, seed=2)
    inactive = _train_set(
        manifest, tokenizer, timestamps_prob=0.5, pack_prob=0.5, seed=2, spec_augment=SpecAugment()
    )
    masked = _train_set(
        manifest, tokenizer, timestamps_prob=0.5, pack_prob=0.5, seed=2,
        spec_augment=SpecAugment(freq_masks=2, freq_width=10, time_masks_per_s=2.0, time_width=0.1),
    )  # fmt: skip
    for m in range(3):
        a, b, c = plain.batch(m, 3), inactive.batch(m, 3), masked.batch(m, 3)
        assert torch.equal(a.mel, b.mel)  # an inactive SpecAugment changes nothing
        assert torch.equal(c.mel, masked.batch(m, 3).mel)  # the masks are the same every time asked
        assert torch.equal(a.labels, c.labels) and not torch.equal(a.mel, c.mel)  # same windows, masked


def test_dropout_pass_is_the_model_without_dropout():
    from voxserve.train.dropout import NO_DROPOUT, Dropout, decode_full, encode

    torch.manual_seed(0)
    model = init_for_training(Whisper(MICRO), seed=0).train()
    mel, tokens = torch.randn(2, 80, 2 * MICRO.n_audio_ctx), torch.randint(0, 50000, (2, 7))
    features = model.encoder(mel)
    assert torch.equal(encode(model.encoder, mel, NO_DROPOUT), features)
    logits = model.decoder.forward_full(tokens, features)
    assert torch.equal(decode_full(model.decoder, tokens, features, NO_DROPOUT), logits)
    some = Dropout(encoder=0.1, decoder=0.1, attention=0.1)
    noisy = decode_full(model.decoder, tokens, encode(model.encoder, mel, some), some)
    assert not torch.allclose(noisy, logits) and not torch.equal(
        noisy, decode_full(model.decoder, tokens, features, some)
    )
    # The model itself stays dropout-free: same modules and state as a plain Whisper.
    assert not any(isinstance(m, torch.nn.Dropout) for m in model.modules())
    with pytest.raises(ValueError):
        Dropout(decoder=1.0)


def test_label_smoothing_is_torch_s_and_logs_the_plain_cross_entropy():
    from voxserve.train.trainer import token_loss

    logits = torch.randn(2, 5, 50)
    labels = torch.randint(0, 50, (2, 5))
    labels[1, 3:] = IGNORE
    loss, ce = token_loss(logits, labels, 0.1)
    flat = logits.flatten(0, 1), labels.flatten()
    torch.testing.assert_close(
        loss, torch.nn.functional.cross_entropy(*flat, ignore_index=IGNORE, label_smoothing=0.1)
    )
    torch.testing.assert_close(ce, torch.nn.functional.cross_entropy(*flat, ignore_index=IGNORE))
    plain, same = token_loss(logits, labels)
    assert plain is same and torch.equal(plain, torch.nn.functional.cross_entropy(*flat, ignore_index=IGNORE))


def test_ctc_weight_schedule():
    from voxserve.train.trainer import ctc_weight_at

    fixed = TrainConfig(steps=100, ctc_weight=0.3)
    assert ctc_weight_at(0, fixed) == ctc_weight_at(99, fixed) == 0.3
    moving = TrainConfig(steps=100, ctc_weight=0.6, ctc_weight_end=0.2)
    assert ctc_weight_at(0, moving) == pytest.approx(0.6) and ctc_weight_at(50, moving) == pytest.approx(0.4)
    assert ctc_weight_at(100, moving) == pytest.approx(0.2) and ctc_weight_at(
        25, moving, 50
    ) == pytest.approx(0.4)
    for bad in (
        {"ctc_weight_end": 1.5},
        {"dropout": 1.0},
        {"label_smoothing": -0.1},
        {"attention_dropout": 2},
    ):
        with pytest.raises(TrainError):
            TrainConfig(**bad)


@pytest.mark.slow
def test_regularised_training_resumes_exactly(manifest, tokenizer, tmp_path):
    """Dropout, label smoothing, a CTC schedule and SpecAugment together: the logged loss is the plain cross
    entropy, and a resumed run (dropout's random state is in the checkpoint) matches the uninterrupted one."""
    from voxserve.train.specaugment import SpecAugment
    from voxserve.train.trainer import sequence_loss

    reg = {"dropout": 0.1, "encoder_dropout": 0.1, "attention_dropout": 0.1, "label_smoothing": 0.1,
           "ctc_weight": 0.5, "ctc_weight_end": 0.1}  # fmt: skip
    spec = SpecAugment(freq_masks=2, freq_width=10, time_masks_per_s=2.0)

    def make(out):
        trainer = _trainer(manifest, tokenizer, out, steps=3, **reg)
        trainer.train_set = _train_set(manifest, tokenizer, timestamps_prob=0.5, seed=0, spec_augment=spec)
        return trainer

    smoothed = _trainer(manifest, tokenizer, tmp_path / "smoothed", steps=3, label_smoothing=0.1)
    batch = smoothed.train_set.batch(0, 2)
    with torch.no_grad():
        expected = sequence_loss(smoothed.model, batch.mel, batch.inputs, batch.labels)
    torch.testing.assert_close(smoothed.train_step()[0], expected)  # the log keeps the plain cross entropy

    full = make(tmp_path / "full")
    torch.manual_seed(123)
    for _ in range(3):
        full.train_step()
    split = make(tmp_path / "split")
    torch.manual_seed(123)
    split.train_step()
    split.save()
    torch.manual_seed(999)  # a fresh process: the checkpoint restores the random state dropout draws from
    again = make(tmp_path / "split")
    assert again.resume() and again.step == 1
    for _ in range(2):
        again.train_step()
    for (name, a), b in zip(full.model.state_dict().items(), again.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.slow
def test_train_command_regularisation_options(manifest, tmp_path, capsys, multilingual_tiktoken):
    out = tmp_path / "run"
    code = _cli(
        "--train", str(manifest / "train.jsonl"), "--out", str(out), "--init-dims", "micro", "--tokenizer",
        str(multilingual_tiktoken), "--steps", "2", "--batch-size", "2", "--log-every", "1", "--ctc-weight", "0.5",
        "--ctc-weight-end", "0.1", "--dropout", "0.2", "--encoder-dropout", "0.1", "--attention-dropout", "0.05",
        "--label-smoothing", "0.1", "--freq-masks", "2", "--freq-mask-width", "12", "--time-masks-per-s", "0.5",
        "--time-mask-width", "0.15", "--quiet",
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    log = [json.loads(line) for line in (out / "train.log").read_text().splitlines()]
    config, info = log[0]["config"], log[0]["start"]
    assert (config["dropout"], config["encoder_dropout"], config["attention_dropout"]) == (0.2, 0.1, 0.05)
    assert (config["label_smoothing"], config["ctc_weight"], config["ctc_weight_end"]) == (0.1, 0.5, 0.1)
    assert info["spec_augment"] == {
        "freq_masks": 2,
        "freq_width": 12,
        "time_masks_per_s": 0.5,
        "time_width": 0.15,
    }
    assert [r["ctc_weight"] for r in log if "loss" in r] == [0.5, 0.3]
    assert _cli("--train", str(manifest / "train.jsonl"), "--out", str(tmp_path / "bad"), "--init-dims", "micro",
                "--time-masks-per-s", "-1", "--quiet") == 1  # fmt: skip
    assert "time_masks_per_s" in capsys.readouterr().err
