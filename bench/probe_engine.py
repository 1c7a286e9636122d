"""Development probe of the engine's speed on a GPU (not the official benchmark: see `voxserve bench`).

python3 bench/probe_engine.py --dims large-v3 --dtype float16
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

from voxserve.audio.features import log_mel_spectrogram, pad_or_trim
from voxserve.config import ModelDims
from voxserve.decoding.batched import BatchDecoder, make_engine
from voxserve.decoding.options import DecodingOptions
from voxserve.engine.types import EngineConfig
from voxserve.model.load import init_random
from voxserve.tokenizer import Tokenizer

DIMS = {
    "tiny": dict(n_mels=80, n_audio_state=384, n_audio_head=6, n_audio_layer=4, n_text_state=384, n_text_head=6,
                 n_text_layer=4, n_vocab=51865, num_languages=99),
    "large-v3": dict(n_mels=128, n_audio_state=1280, n_audio_head=20, n_audio_layer=32, n_text_state=1280,
                     n_text_head=20, n_text_layer=32, n_vocab=51866, num_languages=100),
}  # fmt: skip


def timed(fn: Callable[[], object], repeat: int = 10) -> float:
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dims", default="large-v3")
    ap.add_argument("--dtype", default="float16")
    ap.add_argument("--tiktoken", default=".devdata/whisper-assets/multilingual.tiktoken")
    ap.add_argument("--inputs", type=int, default=512)
    ap.add_argument("--slots", type=int, default=None, help="default: from free GPU memory")
    ap.add_argument("--out", default=None)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--skip-offline", action="store_true")
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    spec = DIMS[args.dims]
    dims = ModelDims(n_audio_ctx=1500, n_text_ctx=448, **spec)
    tok = Tokenizer.from_tiktoken(args.tiktoken, num_languages=dims.num_languages)
    model = init_random(dims, seed=0).to("cuda", dtype)
    report: dict = {"dims": args.dims, "dtype": args.dtype, "gpu": torch.cuda.get_device_name()}
    audio30 = torch.randn(16000 * 30, device="cuda") * 0.1
    mel30 = pad_or_trim(log_mel_spectrogram(audio30, dims.n_mels))

    # encoder alone, eager (the engine captures it as graphs: see the latency figures)
    for b in (1, 32):
        m = mel30[None].expand(b, -1, -1).to(dtype).contiguous()
        with torch.no_grad():
            model.encoder(m)
            t = timed(lambda m=m: model.encoder(m), 5)
        report[f"encoder_ms_b{b}"] = round(t * 1000, 2)
        print(f"encoder b={b}: {t * 1000:.2f} ms ({30 * b / t:.0f}x real time)", flush=True)

    eot = tok.eot
    fixed100 = DecodingOptions(
        language="en",
        without_timestamps=True,
        sample_len=100,
        suppress_tokens=(-1, eot),
        suppress_blank=False,
    )
    fixed20 = fixed100.with_changes(sample_len=20)
    cfg = EngineConfig(max_slots=args.slots, max_admit=32, compile=args.compile)
    if args.compile:  # one compile per bucket: keep the probe to a few
        cfg = EngineConfig(max_slots=args.slots or 64, max_admit=8, compile=True, buckets=(1, 8, 64))
    report["compile"] = args.compile
    eng = make_engine(model, tok, cfg)
    bd = BatchDecoder(eng, model, tok)
    try:
        print(f"slots: {eng.n_slots}", flush=True)
        # warm-up: captures every graph bucket on first use
        t = time.perf_counter()
        bd.decode(mel30[None], fixed20)
        for b in eng.runner.buckets:
            eng.runner._graph(b, False)
        report["graph_capture_s"] = round(time.perf_counter() - t, 2)
        print(f"warm-up (graphs for {eng.runner.buckets}): {report['graph_capture_s']} s", flush=True)

        # decode-step latency by batch size (graph replay, rows parked mid-sequence)
        runner = eng.runner
        for b in [x for x in (1, 8, 32, 64, 128, 256) if x <= eng.n_slots]:
            slots = list(range(b))
            runner.policy.length[:b] = 10
            runner.policy.done[:b] = False
            runner.policy.sample_len[:b] = 10**6
            t = timed(lambda slots=slots: runner.step(slots), 20)
            runner.policy.length[:b] = 10
            report[f"step_ms_b{b}"] = round(t * 1000, 3)
            print(f"decode step b={b}: {t * 1000:.3f} ms", flush=True)

        # one request on an idle engine, end to end from audio on the GPU
        for secs, opts in ((30, fixed100), (5, fixed20)):
            audio = audio30[: 16000 * secs]

            def one(audio: torch.Tensor = audio, opts: DecodingOptions = opts) -> None:
                mel = pad_or_trim(log_mel_spectrogram(audio, dims.n_mels))
                r = bd.decode(mel[None], opts)[0]
                assert len(r.tokens) == opts.sample_len, len(r.tokens)

            one()
            t = timed(one, 10)
            report[f"latency_ms_{secs}s"] = round(t * 1000, 2)
            print(f"one {secs} s request: {t * 1000:.1f} ms", flush=True)

        # offline throughput: N x 30 s inputs, 100 tokens each
        if args.skip_offline:
            return
        n = args.inputs
        audios = [audio30 * (0.5 + (i % 7) / 7) for i in range(n)]

        def offline():
            mels = torch.stack([pad_or_trim(log_mel_spectrogram(a, dims.n_mels)) for a in audios])
            results = bd.decode(mels, fixed100)
            assert all(len(r.tokens) == 100 for r in results)

        offline()
        t = timed(offline, 2)
        report["offline_inputs"] = n
        report["offline_s"] = round(t, 3)
        report["offline_rtf"] = round(30 * n / t, 1)
        print(f"offline {n} x 30 s: {t:.2f} s = {30 * n / t:.0f}x real time", flush=True)
    finally:
        eng.close()
        print(json.dumps(report))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
