"""``voxserve train``: train a Whisper model from scratch or fine-tune a checkpoint on JSONL manifests."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

_SHARED_TIKTOKEN = (
    Path(__file__).resolve().parents[2].parent / "shared/data/whisper-assets/multilingual.tiktoken"
)


def _prob(text: str) -> float:
    p = float(text)
    if not 0.0 <= p <= 1.0:
        raise argparse.ArgumentTypeError(f"a probability must be in [0, 1], got {text}")
    return p


def _fraction(text: str) -> float:
    p = float(text)
    if not 0.0 <= p < 1.0:
        raise argparse.ArgumentTypeError(f"expected a value in [0, 1), got {text}")
    return p


def _pair(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI, got {text!r}") from None
    if lo > hi:
        raise argparse.ArgumentTypeError(f"LO must not exceed HI in {text!r}")
    return lo, hi


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model from scratch or fine-tune one on manifests",
        description="Train a Whisper-architecture model on JSONL manifests (as `voxserve synth` writes: audio, "
        "text, language, optional speech_start/speech_end). Checkpoints go to DIR/checkpoints, a JSON-lines log "
        "to DIR/train.log, and the trained model to DIR/final as a Hugging Face directory that voxserve and "
        "transformers load.",
    )
    p.add_argument("--train", required=True, help="training manifest(s), comma-separated")
    p.add_argument(
        "--eval", help="held-out manifest scored (WER/CER) every --eval-every steps and at the end"
    )
    p.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, train.log, final/)")
    init = p.add_mutually_exclusive_group(required=True)
    init.add_argument("--init-dims", metavar="SPEC", help="train from scratch with these dimensions: a preset "
                      "(demo: d=256, 4 heads, 6 encoder / 3 decoder layers, 43 MB in fp16; tiny: Whisper tiny's "
                      "shape; micro: a toy for tests) or d=W,heads=H,enc=E,dec=D[,mels=M][,ctx=C]")  # fmt: skip
    init.add_argument("--init-from", metavar="MODEL", help="fine-tune a checkpoint voxserve loads (Hugging Face "
                      "directory, openai-whisper .pt file or hub id)")  # fmt: skip
    p.add_argument("--tokenizer", type=Path, help="tokenizer for --init-dims: a .tiktoken file or Hugging Face "
                   "tokenizer directory (default: ../shared/data/whisper-assets/multilingual.tiktoken); "
                   "--init-from uses the checkpoint's own")  # fmt: skip
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps in the whole run (default 1000)")
    p.add_argument("--batch-size", type=int, default=16, help="30 s windows per micro-batch (default 16)")
    p.add_argument("--grad-accum", type=int, default=1, metavar="K",
                   help="micro-batches per optimizer step (default 1)")  # fmt: skip
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default 1e-3 from scratch, "
                   "1e-5 when fine-tuning)")  # fmt: skip
    p.add_argument("--warmup", type=int, default=None, metavar="W",
                   help="linear warm-up steps before the cosine decay (default: 5%% of --steps)")  # fmt: skip
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay on matrices (0.01)")
    p.add_argument("--precision", choices=("bf16", "fp16", "fp32"), default="bf16",
                   help="autocast dtype on CUDA (default bf16; fp16 adds loss scaling); the CPU trains in fp32")  # fmt: skip
    p.add_argument("--eval-every", type=int, default=500, metavar="N",
                   help="steps between held-out evaluations; 0: only at the end (default 500)")  # fmt: skip
    p.add_argument("--eval-limit", type=int, default=256, metavar="N",
                   help="held-out utterances scored per evaluation; 0: all (default 256)")  # fmt: skip
    p.add_argument(
        "--eval-batch-size", type=int, default=64, help="windows decoded at once in evaluation (64)"
    )
    p.add_argument("--save-every", type=int, default=1000, metavar="N",
                   help="steps between checkpoints; one is always written at the end (default 1000)")  # fmt: skip
    p.add_argument(
        "--log-every", type=int, default=10, metavar="N", help="steps between train.log lines (10)"
    )
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in DIR/checkpoints "
                   "(same --batch-size, --grad-accum and --seed), exactly where it stopped")  # fmt: skip
    p.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda when available")
    p.add_argument("--seed", type=int, default=0, help="seed for initialisation and data order (default 0)")
    p.add_argument("--max-minutes", type=float, metavar="M", help="stop after M minutes of training (the "
                   "checkpoint, final evaluation and export follow); the cosine decay is fitted to end when the "
                   "time does, at the pace measured after 50 steps, so the step count depends on the machine")  # fmt: skip
    p.add_argument("--timestamps-prob", type=_prob, default=0.3, metavar="P",
                   help="probability of a timestamped target instead of <|notimestamps|> (default 0.3)")  # fmt: skip
    p.add_argument("--pack-prob", type=_prob, default=0.0, metavar="P",
                   help="probability of packing several utterances, with short gaps and a timestamp pair each, "
                   "into one window of up to 30 s (teaches long-form segmentation; default 0)")  # fmt: skip
    p.add_argument("--noise-prob", type=_prob, default=0.0, metavar="P",
                   help="on-the-fly additive noise probability per window (default 0)")  # fmt: skip
    p.add_argument("--snr-db", type=_pair, default=(5.0, 30.0), metavar="LO,HI",
                   help="SNR range of on-the-fly noise in dB (default 5,30)")  # fmt: skip
    p.add_argument("--telephone-prob", type=_prob, default=0.0, metavar="P",
                   help="on-the-fly 8 kHz G.711 mu-law telephone channel probability (default 0)")  # fmt: skip
    p.add_argument("--gain-prob", type=_prob, default=0.0, metavar="P",
                   help="on-the-fly random gain (-6..+6 dB) probability (default 0)")  # fmt: skip
    p.add_argument(
        "--ctc-weight",
        type=_prob,
        default=0.0,
        metavar="W",
        help="weight of an auxiliary character CTC loss on the encoder (0: off, default). 0.3 makes "
        "training from scratch learn to listen far sooner; the exported model is unchanged",
    )
    p.add_argument("--ctc-weight-end", type=_prob, metavar="W",
                   help="move the CTC weight linearly from --ctc-weight at the start to W at the end of the "
                   "cosine (default: keep --ctc-weight)")  # fmt: skip
    reg = p.add_argument_group("regularisation (against memorising the training text; all off by default)")
    reg.add_argument("--dropout", type=_fraction, default=0.0, metavar="P",
                     help="residual and input-embedding dropout in the decoder while training (the exported "
                     "model has none)")  # fmt: skip
    reg.add_argument("--encoder-dropout", type=_fraction, default=0.0, metavar="P",
                     help="residual dropout in the encoder while training")  # fmt: skip
    reg.add_argument("--attention-dropout", type=_fraction, default=0.0, metavar="P",
                     help="dropout on attention weights (encoder and decoder) while training")  # fmt: skip
    reg.add_argument("--label-smoothing", type=_fraction, default=0.0, metavar="E",
                     help="label smoothing of the decoder's targets; train.log keeps the plain cross entropy")  # fmt: skip
    reg.add_argument("--freq-masks", type=int, default=0, metavar="N",
                     help="SpecAugment frequency masks per window on the training log-mel")  # fmt: skip
    reg.add_argument("--freq-mask-width", type=int, default=27, metavar="BINS",
                     help="widest frequency mask in mel bins (default 27)")  # fmt: skip
    reg.add_argument("--time-masks-per-s", type=float, default=0.0, metavar="R",
                     help="SpecAugment time masks per second of audio in a window (adaptive to its length)")  # fmt: skip
    reg.add_argument("--time-mask-width", type=float, default=0.1, metavar="S",
                     help="widest time mask in seconds (default 0.1)")  # fmt: skip
    p.add_argument(
        "--keep-schedule",
        action="store_true",
        help="with --max-minutes, keep the learning-rate cosine planned for --steps instead of fitting "
        "it to the time budget (for a run split over several sessions with --resume)",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the loss computation")
    p.add_argument("--export-dtype", choices=("fp16", "bf16", "fp32"), default="fp16",
                   help="dtype of the weights in DIR/final (default fp16: half the size)")  # fmt: skip
    p.add_argument("--workers", type=int, default=8, help="threads reading the audio into memory (default 8)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def _fail(message: str, code: int = 1) -> int:
    print(f"voxserve train: error: {message}", file=sys.stderr)
    return code


def run(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    import torch

    from ..model.load import ModelLoadError
    from ..model.whisper import Whisper
    from ..train.augment import Augmentation
    from ..train.data import TrainingSet, window_samples
    from ..train.loading import SHARED_TIKTOKEN, load_model_and_tokenizer, load_tokenizer
    from ..train.manifest import ManifestError, load_all_audio, read_manifest
    from ..train.presets import parse_dims
    from ..train.specaugment import SpecAugment
    from ..train.trainer import TrainConfig, Trainer, TrainError, init_for_training

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        return _fail("--device cuda was asked for, but no CUDA device is available", 2)
    torch.manual_seed(args.seed)
    base_generation = None
    try:
        if args.init_from:
            model, info, tokenizer = load_model_and_tokenizer(
                args.init_from, device="cpu", dtype="float32", tokenizer=args.tokenizer
            )
            base_generation = info.generation or None
            origin = f"fine-tuned from {args.init_from}"
        else:
            dims = parse_dims(args.init_dims)
            tokenizer = load_tokenizer(args.tokenizer or SHARED_TIKTOKEN, num_languages=dims.num_languages)
            if tokenizer.n_vocab != dims.n_vocab:
                return _fail(f"the tokenizer has {tokenizer.n_vocab} tokens, the dims say {dims.n_vocab}", 2)
            with torch.device("meta"):
                Whisper(dims)  # checks the dims before any work
            model = init_for_training(Whisper(dims), args.seed)
            origin = f"from scratch ({args.init_dims}, seed {args.seed})"
        model = model.to(device).train()

        train_items = [u for path in args.train.split(",") if path for u in read_manifest(path)]
        eval_items = read_manifest(args.eval) if args.eval else []
        progress = not args.quiet
        train_audio = load_all_audio(train_items, workers=args.workers, progress=progress)
        eval_audio = load_all_audio(eval_items, workers=args.workers, progress=progress) if eval_items else []

        config = TrainConfig(
            steps=args.steps, batch_size=args.batch_size, grad_accum=args.grad_accum,
            lr=args.lr if args.lr is not None else (1e-5 if args.init_from else 1e-3),
            warmup=args.warmup if args.warmup is not None else max(1, args.steps // 20),
            weight_decay=args.weight_decay, precision=args.precision, eval_every=args.eval_every,
            eval_limit=args.eval_limit or None, eval_batch_size=args.eval_batch_size, save_every=args.save_every,
            log_every=args.log_every, seed=args.seed, max_minutes=args.max_minutes, compile=args.compile,
            export_dtype=args.export_dtype, ctc_weight=args.ctc_weight,
            fit_schedule=not args.keep_schedule, ctc_weight_end=args.ctc_weight_end, dropout=args.dropout,
            encoder_dropout=args.encoder_dropout, attention_dropout=args.attention_dropout,
            label_smoothing=args.label_smoothing,
        )  # fmt: skip
        spec_augment = SpecAugment(
            freq_masks=args.freq_masks, freq_width=args.freq_mask_width, time_masks_per_s=args.time_masks_per_s,
            time_width=args.time_mask_width,
        )  # fmt: skip
        augmentation = Augmentation(
            noise_prob=args.noise_prob, snr_db=args.snr_db, telephone_prob=args.telephone_prob,
            gain_prob=args.gain_prob,
        )  # fmt: skip
        train_set = TrainingSet(
            train_items, train_audio, tokenizer, n_mels=model.dims.n_mels, max_tokens=model.dims.n_text_ctx,
            window_samples=window_samples(model.dims.n_audio_ctx),
            device=device, seed=args.seed, timestamps_prob=args.timestamps_prob, pack_prob=args.pack_prob,
            augmentation=augmentation, spec_augment=spec_augment,
        )  # fmt: skip
        del train_audio
        if train_set.skipped:
            print(
                f"voxserve train: skipped {len(train_set.skipped)} utterances (empty, over 30 s or too much text)"
            )
        run_info = {
            "origin": origin, "train": args.train, "eval": args.eval, "device": str(device),
            "train_utterances": len(train_set), "dims": model.dims.to_dict(),
            "augmentation": {"noise_prob": args.noise_prob, "telephone_prob": args.telephone_prob,
                             "gain_prob": args.gain_prob},
            "timestamps_prob": args.timestamps_prob, "pack_prob": args.pack_prob,
            "spec_augment": asdict(spec_augment),
        }  # fmt: skip
        trainer = Trainer(
            model, tokenizer, train_set, config, args.out, eval_items=eval_items, eval_audio=eval_audio,
            base_generation=base_generation, run_info=run_info,
        )  # fmt: skip
        result = trainer.run(resume=args.resume, progress=progress)
    except (ManifestError, ModelLoadError, TrainError, ValueError, FileNotFoundError) as e:
        return _fail(str(e))
    status = "stopped by --max-minutes" if result.stopped_early else "done"
    print(f"{status} at step {result.step}; model: {result.final_dir}; checkpoint: {result.checkpoint}")
    if result.last_eval:
        print(f"held-out: {result.last_eval.headline()}")
    return 0
