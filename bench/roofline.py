"""What the GPU targets of issue 4 allow at best: the time each piece of `voxserve bench`'s work takes when it
runs at the machine's full memory bandwidth or full matrix throughput, whichever binds, with nothing else
(no launch gaps, no host, perfect overlap). Arithmetic only; no GPU needed.

python3 bench/roofline.py --dims large-v3 --bandwidth 4.3e12 --flops 788e12

Defaults are the H200's figures measured in the device notes (a device-to-device copy at ~4.3 TB/s counting bytes
read and written; an 8192^3 bf16 product at 788 TFLOP/s on random data): generous ceilings, not what small
kernels reach.
"""

from __future__ import annotations

import argparse

from probe_engine import DIMS  # noqa: I001 - a sibling script

AUDIO_POSITIONS = 1500  # encoder positions of a 30 s window
MEL_FRAMES = 3000


def encoder_flops(d: int, layers: int, n_mels: int, positions: int) -> float:
    """Multiply-adds x 2 of one window through the encoder: two convolutions, then per layer the four attention
    projections, the two MLP products (4d wide) and the attention itself (QK^T and PV)."""
    frames = positions * 2
    convs = 2 * frames * n_mels * d * 3 + 2 * positions * d * d * 3
    per_layer = 2 * positions * (4 * d * d + 8 * d * d) + 2 * 2 * positions * positions * d
    return convs + layers * per_layer


def step_weight_bytes(d: int, layers: int, vocab: int, elem: int) -> float:
    """Weights one decode step reads once, whatever the batch: per layer the self-attention's four projections,
    the cross-attention's query and output (its keys and values are precomputed), the MLP; then the logits."""
    return (layers * (4 + 2 + 8) * d * d + vocab * d) * elem


def cross_kv_bytes(d: int, layers: int, positions: int, elem: float) -> float:
    """Cross-attention keys and values one row reads in every decode step."""
    return 2 * layers * positions * d * elem


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dims", default="large-v3", choices=sorted(DIMS))
    ap.add_argument("--bandwidth", type=float, default=4.3e12, help="bytes/s (default: H200, measured copy)")
    ap.add_argument(
        "--flops", type=float, default=788e12, help="FLOP/s of fp16/bf16 products (default: H200)"
    )
    ap.add_argument("--tokens", type=int, default=100, help="decode steps of a 30 s window (bench: 100)")
    ap.add_argument("--batch", type=int, default=256, help="rows decoded together offline")
    live = ap.add_argument_group(
        "live streams (issue 6): the encoder work that re-decoding partials asks for"
    )
    live.add_argument("--streams", type=int, default=500)
    live.add_argument(
        "--partial-interval", type=float, default=0.2, help="seconds between a stream's partials"
    )
    live.add_argument(
        "--speech-fraction", type=float, default=0.76,
        help="share of time a caller speaks (stream bench: 2.6 s clips, 0.4-1.2 s pauses)",
    )  # fmt: skip
    live.add_argument(
        "--window-s", type=float, default=3.2,
        help="mean padded window a partial encodes (short windows; profile_streams at 100 streams: ~3.2 s)",
    )  # fmt: skip
    args = ap.parse_args()
    dims = DIMS[args.dims]
    d, layers, vocab = dims["n_text_state"], dims["n_text_layer"], dims["n_vocab"]
    bw, fl, n = args.bandwidth, args.flops, args.tokens

    enc_ms = encoder_flops(d, dims["n_audio_layer"], dims["n_mels"], AUDIO_POSITIONS) / fl * 1e3
    weights_ms = step_weight_bytes(d, layers, vocab, 2) / bw * 1e3
    kv16_ms = cross_kv_bytes(d, layers, AUDIO_POSITIONS, 2) / bw * 1e3
    # int8 with a float32 scale per (position, head): 1 byte a value plus 4 bytes per 64 values
    kv8_ms = cross_kv_bytes(d, layers, AUDIO_POSITIONS, 1 + 4 / 64) / bw * 1e3
    print(f"{args.dims}, fp16, {bw / 1e12:.2f} TB/s, {fl / 1e12:.0f} TFLOP/s, {n} tokens per 30 s window")
    print(f"  encoder, one 30 s window (compute-bound)        {enc_ms:7.3f} ms")
    print(f"  decode step, weights (read once per step)       {weights_ms:7.3f} ms")
    print(f"  decode step, one row's cross K/V fp16 / int8    {kv16_ms:7.3f} / {kv8_ms:.3f} ms")
    print(f"  step at batch 1 (fp16 K/V), floor               {weights_ms + kv16_ms:7.3f} ms")
    for label, kv in (("fp16", kv16_ms), ("int8", kv8_ms)):
        request = enc_ms + n * (weights_ms + kv)
        per_window = enc_ms + n * (kv + weights_ms / args.batch)
        print(
            f"  cross K/V {label}: one 30 s request >= {request:6.1f} ms; "
            f"offline at batch {args.batch} <= {30e3 / per_window:6.0f}x real time "
            f"({per_window:.2f} ms a window, {n * kv / per_window:.0%} of it cross K/V)"
        )
    # Each partial re-encodes its utterance so far (Whisper's encoder attends over the whole window, so no
    # encoder state carries over from the previous partial).
    positions = round(args.window_s * AUDIO_POSITIONS / 30)
    per_decode = encoder_flops(d, dims["n_audio_layer"], dims["n_mels"], positions)
    decodes = args.streams * args.speech_fraction / args.partial_interval
    print(
        f"  {args.streams} live streams, a partial every {args.partial_interval:g} s while speaking "
        f"({args.speech_fraction:.0%}), {args.window_s:g} s windows: {decodes:,.0f} decodes/s, encoder alone "
        f"{decodes * per_decode / 1e12:,.0f} TFLOP/s = {decodes * per_decode / fl:.0%} of the ceiling"
    )


if __name__ == "__main__":
    main()
