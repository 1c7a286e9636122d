#!/bin/bash
# A device-machine session's standard runs, each part under its own time limit so that a slow part cannot
# starve the rest, each mode inside one 600 s device call (all of it did not fit one: on a fresh machine the
# tests alone took over 360 s, Triton compiling and tuning). Results and logs go to $OUT (the device tool copies
# them back).
#
#   bash bench/gpu_check.sh tests [ASSETS]  the GPU tests: engine, quantization and parity, then the fused kernels
#   bash bench/gpu_check.sh perf [ASSETS]   the step profile (fused, with and without dependent launch), then
#                                           `voxserve bench` of the default engine against the unfused one
#   bash bench/gpu_check.sh streams [ASSETS] the live GPU tests (prefill, packed encoder, audio windows), the
#                                           stream profile at 200 callers (log-mels on the host vs made by the
#                                           engine, alternating), then `voxserve bench --streams 100,200,300`
#                                           with packing and engine log-mels
#   bash bench/gpu_check.sh streams-ab [ASSETS] the live GPU tests, then that bench with engine log-mels
#                                           unpacked, with host log-mels packed, and at 400,500 streams
#   bash bench/gpu_check.sh phases [ASSETS]  the live GPU tests and the Triton kernels' tests (a kernel off for the
#                                           rest where its test fails), then where the device's time goes at 400
#                                           streams (bench/profile_streams.py --phases) with padded and packed
#                                           prefills, and the bench at 400 streams: stop 20's engine and packed
#                                           prefills before the profile, the fp8 encoder after
#   bash bench/gpu_check.sh kernels-ab [ASSETS] the fp8 and live GPU tests with the kernels on by default, the
#                                           400-stream profile with log-mels per window length and merged, and at
#                                           a GIL switch interval of 0.5 ms, then the bench at 400 streams with the
#                                           scatter kernel off and on (AB_BENCH=0: not)
#   bash bench/gpu_check.sh overlap [ASSETS] the overlapped-admission GPU tests (and the audio-window ones, and
#                                           that a live admission's launch never waits for the device), one
#                                           admission's host time alone (bench/profile_admission.py), the
#                                           400-stream profile with admissions overlapped and not (only with
#                                           OVERLAP_PHASES=1), then the bench at 300-600 streams with overlapped
#                                           admissions and at 400 without (OVERLAP_BENCH=0: neither), and with
#                                           OVERLAP_BUCKETS=1 at 400 with windows in whole seconds
#   bash bench/gpu_check.sh live-step [ASSETS] decode steps at the live bench's shapes (bench/profile_step.py
#                                           --live), the bench with overlapped admissions at LIVE_STREAMS
#                                           (150,200,250), then at 400 with windows in whole seconds
#   bash bench/gpu_check.sh mels-kv-ab [ASSETS] the attention kernel's launches at live shapes, the
#                                           packed-prefill GPU tests (int8 cross K/V too), then at 400 streams
#                                           with overlapped admissions: log-mels per length and merged, each with
#                                           the cross K/V in fp16 and int8; with AB_STREAMS (e.g. 250,300) the
#                                           bench there too, with AB_FLAGS (e.g. --cross-kv int8)
#   bash bench/gpu_check.sh encoder [ASSETS] the engine's GPU tests of stop 27's changes (steps' and admissions'
#                                           results read with one tolist), the packed encoder pass by kernel in
#                                           fp16 and fp8 (bench/profile_encoder.py), then the bench (overlapped
#                                           admissions, the default now) at ENCODER_STREAMS (150,200,250)
#   bash bench/gpu_check.sh fold [ASSETS]   stop 28's fp8 encoder (norms and GELU inside the activations'
#                                           quantization, off by default since stop 30 measured it slower:
#                                           qlinear.FOLD_INTO_FP8; fused query/key/value): the fp8 and packed-encoder GPU
#                                           tests after bench/profile_encoder.py, the demo model's live WER with
#                                           the fp16 and the fp8 encoder where ASSETS has speech-cache/ and text/
#                                           (FOLD_PART=tests), then (FOLD_PART=bench: only) the bench at
#                                           FOLD_STREAMS (200) with the fp16 and the fp8 encoder, alternating,
#                                           FOLD_ROUNDS (1) times; both parts exceed one 600 s call. The speech
#                                           cache, made here (espeak-ng):
#                                           mkdir -p .devdata/text && cp ../shared/data/text/ljspeech-metadata.csv
#                                           .devdata/text/ && python -m voxserve.live.window_accuracy --n 160
#                                           --device cpu --speech-cache .devdata/speech-cache (its WER: the CPU's)
#   bash bench/gpu_check.sh trees-ab [ASSETS] the stream bench at AB_STREAMS (200) from this tree and from each
#                                           other commit's tree in AB_TREES (space-separated tarballs, carried in
#                                           ASSETS, e.g. `git archive ff354c6 voxserve ':!voxserve/assets'
#                                           -o .devdata/ff354c6.tar`), alternating, AB_ROUNDS (2) times
#   bash bench/gpu_check.sh process [ASSETS] stop 28's fold's GPU tests (PROC_TESTS=0: not), then the stream bench
#                                           at PROC_STREAMS (200,300) with the engine in a thread (fp16), in a
#                                           process of its own (--engine-process) and with the fp8 encoder,
#                                           PROC_ROUNDS (1) times, then bench/profile_encoder.py: in order of need,
#                                           more than one 600 s call holds (the rest is cut off)
#   bash bench/gpu_check.sh serve-process [ASSETS] `voxserve serve --engine-process`'s GPU test and stop 30's two
#                                           edited fp8-fold tests (SP_TESTS=0: not), then the stream bench against
#                                           `voxserve serve`'s whole application (--transport server: registry,
#                                           runtime, metrics, the realtime route under uvicorn, callers in client
#                                           processes over WebSockets) at SP_STREAMS (250) with the engine in a
#                                           thread and in a process, alternating, SP_ROUNDS (1) times
#                                           The server's packages are not on the GPU machine: carry their cp312
#                                           wheels in .whl too (`pip download --only-binary=:all: --python-version
#                                           3.12 ... fastapi uvicorn websockets pydantic-settings python-multipart`)
#   bash bench/gpu_check.sh host [ASSETS]   the host's side of live streams: bench/cpu_contention.py, then the
#                                           stream profile at 100 and 200 callers with torch's threads 16 and 1
#   ASSETS: a folder with whisper-assets/, audio/hifitts-6097/ and audio/samples/ (default .devdata;
#   VOXSERVE_SHARED_DATA is set to it for the tests). Made here, before the device call, from the repository root:
#     mkdir -p .devdata/audio && cp -r ../shared/data/whisper-assets .devdata/ \
#       && cp -r ../shared/data/audio/hifitts-6097 ../shared/data/audio/samples .devdata/audio/
#   and carried (`carry: [".devdata"]`; it is git-ignored through .git/info/exclude). The tracked tree (46.5 MiB,
#   the demo model most of it) leaves ~17 MiB of the carry's 64: for `process`, .devproc with whisper-assets/,
#   audio/hifitts-6097/ and audio/samples/jfk.wav only; for `fold`, .devfold with whisper-assets/, jfk.wav, an
#   audio/hifitts-6097/manifest.json alone, `head -n 222` of ljspeech-metadata.csv in text/ (the first 96 speakable
#   sentences) and their speech (`python -m voxserve.live.window_accuracy --n 96 --device cpu --speech-cache
#   .devfold/speech-cache --text .devfold/text/ljspeech-metadata.csv`), run with FOLD_N=96. The GPU machine lacks
#   tiktoken: download its cp312 wheel into .whl, carry it too and install it first (the device tool's README).
set -u
MODE=${1:?usage: bash bench/gpu_check.sh tests|perf|streams|streams-ab|phases|kernels-ab|overlap|live-step|mels-kv-ab|encoder|fold|process|serve-process|trees-ab|host [ASSETS]}
ASSETS=${2:-.devdata}
# A missing file fails a dozen GPU tests with FileNotFoundError (stop 17 lost a run to audio/samples): say so first.
for need in whisper-assets/multilingual.tiktoken audio/hifitts-6097 audio/samples/jfk.wav; do
    [ -e "$ASSETS/$need" ] || { echo "gpu_check: $ASSETS/$need is missing (see the header for how to make it)" >&2; exit 2; }
done
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
export VOXSERVE_SHARED_DATA=$PWD/$ASSETS PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
T0=$SECONDS
part() {  # part LIMIT_S NAME COMMAND...: run, keep the whole log under $OUT, print its tail
    local limit=$1 name=$2
    shift 2
    echo "=== [$((SECONDS - T0)) s] $name (limit $limit s)"
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "=== $name: exit $rc after $((SECONDS - T0)) s"
    tail -n 25 "$OUT/$name.log"
    return $rc
}
bench_streams() {  # bench_streams LIMIT NAME STREAMS [FLAGS...]: the stream bench, packed encoder, engine log-mels
    local limit=$1 name=$2 streams=$3
    shift 3
    part "$limit" "$name" python3 -m voxserve bench --streams "$streams" --packed-encoder --mels engine "$@" \
        --dims large-v3 --device cuda --precision fp16 --short-windows --partial-interval 0.2 --stream-seconds 12 \
        --max-admit 64 --vad oracle --audio "$ASSETS/audio/hifitts-6097" \
        --tiktoken "$ASSETS/whisper-assets/multilingual.tiktoken" --out "$OUT"
}
bench400() {  # bench400 NAME [FLAGS...]: at 400 streams, admissions one after the other unless FLAGS say
    local name=$1
    shift
    bench_streams 90 "bench-streams-400-$name" 400 --no-overlap-admissions "$@"
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
if [ "$MODE" = tests ]; then
    part 270 tests-engine python3 -m pytest -q -m gpu tests/gpu/test_engine_cuda.py tests/gpu/test_quant_cuda.py \
        tests/parity tests/unit --ignore=tests/unit/test_audio_io.py -p no:cacheprovider --durations=10 -rfE
    part 290 tests-fused python3 -m pytest -q -m gpu tests/gpu/test_fused_cuda.py -p no:cacheprovider \
        --durations=10 -rfE
elif [ "$MODE" = perf ]; then
    part 230 profile python3 bench/profile_step.py --dims large-v3 \
        --tiktoken "$ASSETS/whisper-assets/multilingual.tiktoken"
    part 320 bench python3 -m voxserve bench --suite all --dims large-v3 --device cuda --precision fp16 \
        --peers none --batch 64 --n-inputs 64 --step-batches 1,8,64 --repeats 3 --subject engine,engine-unfused \
        --audio "$ASSETS/audio/hifitts-6097" --tiktoken "$ASSETS/whisper-assets/multilingual.tiktoken" \
        --cache /tmp/vb --out "$OUT"
elif [ "$MODE" = streams ]; then
    part 150 tests-live python3 -m pytest -q -m gpu tests/gpu/test_engine_cuda.py \
        -k "reference_fp32 or by_length or packed or audio_windows" -p no:cacheprovider --durations=5 -rfE
    # log-mels on the host against made by the engine from audio, packed passes, alternating, one warmed engine
    part 150 profile-streams python3 bench/profile_streams.py --streams 200 --seconds 10 \
        --audio "$ASSETS/audio/hifitts-6097" --tiktoken "$ASSETS/whisper-assets/multilingual.tiktoken" \
        --variant packed=1,enginemels=0 --variant packed=1,enginemels=1 --variant packed=1,enginemels=0 \
        --variant packed=1,enginemels=1
    part 230 bench-streams-engine-mels python3 -m voxserve bench --streams 100,200,300 --dims large-v3 \
        --device cuda --precision fp16 --short-windows --partial-interval 0.2 --stream-seconds 15 \
        --max-admit 64 --vad oracle --packed-encoder --mels engine --no-overlap-admissions \
        --audio "$ASSETS/audio/hifitts-6097" --tiktoken "$ASSETS/whisper-assets/multilingual.tiktoken" --out "$OUT"
elif [ "$MODE" = streams-ab ]; then
    part 100 tests-live python3 -m pytest -q -m gpu tests/gpu/test_engine_cuda.py \
        -k "packed or audio_windows or scatter" -p no:cacheprovider --durations=5 -rfE
    # engine log-mels with per-length encoder passes, host log-mels packed (the baseline), then more streams
    for variant in "100,200,300 --mels engine" "100,200,300 --packed-encoder --mels host" \
        "400,500 --packed-encoder --mels engine"; do
        part 140 "bench-streams-${variant// /}" python3 -m voxserve bench --streams $variant --dims large-v3 \
            --device cuda --precision fp16 --short-windows --partial-interval 0.2 --stream-seconds 15 \
            --max-admit 64 --vad oracle --no-overlap-admissions --audio "$ASSETS/audio/hifitts-6097" \
            --tiktoken "$ASSETS/whisper-assets/multilingual.tiktoken" --out "$OUT"
    done
elif [ "$MODE" = phases ]; then
    part 120 tests-live python3 -m pytest -q -m gpu tests/gpu/test_engine_cuda.py \
        -k "packed or audio_windows" -p no:cacheprovider --durations=5 -rfE
    # the Triton kernels (on by default since 2026-12-07): off for what follows where their tests fail here
    part 50 tests-scatter python3 -m pytest -q -m gpu tests/gpu/test_engine_cuda.py -k scatter \
        -p no:cacheprovider -rfE || export VOXSERVE_SCATTER_KERNEL=0
    part 50 tests-fp8rows python3 -m pytest -q -m gpu tests/gpu/test_quant_cuda.py -k row_quantize \
        -p no:cacheprovider -rfE || export VOXSERVE_FP8ROWS_KERNEL=0
    echo "kernels: scatter ${VOXSERVE_SCATTER_KERNEL:-1}, fp8 rows ${VOXSERVE_FP8ROWS_KERNEL:-1}"
    # the bench at 400 streams: stop 20's engine with the kernels off (the baseline on this card), then packed
    # prefills with the kernels as tested, the encoder in fp16 (and in fp8, after the profile); PHASES_BENCH=0
    # skips them
    if [ "${PHASES_BENCH:-1}" = 1 ]; then
        VOXSERVE_SCATTER_KERNEL=0 VOXSERVE_FP8ROWS_KERNEL=0 bench400 baseline
        bench400 packed-prefill --packed-prefill
    fi
    # padded and packed prefills alternating on one engine at 400 streams, device time by part (no syncs);
    # PHASES_RUNS=4 for two runs of each
    variants="--variant packed=1,prefill=0 --variant packed=1,prefill=1"
    [ "${PHASES_RUNS:-2}" = 4 ] && variants="$variants $variants"
    part 120 profile-phases-400 python3 bench/profile_streams.py --streams 400 --seconds 8 --phases $variants \
        --audio "$ASSETS/audio/hifitts-6097" --tiktoken "$ASSETS/whisper-assets/multilingual.tiktoken"
    # last, so that a call cut short loses it first
    [ "${PHASES_BENCH:-1}" = 1 ] && bench400 packed-prefill-fp8-encoder --packed-prefill --encoder-precision fp8
elif [ "$MODE" = kernels-ab ]; then
    # the GPU tests with the kernels on by default (the fp8 ones whole: compiled and graphed fp8 Linears run the
    # row kernel now; audio_windows: the log-mels of every window length in one transform), then the log-mels'
    # host time one transform per window length against one for all (stop 23), and at a GIL switch interval of
    # 0.5 ms instead of Python's 5, and what the scatter kernel is worth at 400 streams (index_put against it)
    part 200 tests-kernels python3 -m pytest -q -m gpu tests/gpu/test_quant_cuda.py tests/gpu/test_engine_cuda.py \
        -k "test_quant_cuda or packed or audio_windows or scatter" -p no:cacheprovider --durations=5 -rfE
    part 130 profile-mels-switch-400 python3 bench/profile_streams.py --streams 400 --seconds 8 --phases \
        --variant packed=1,prefill=1,mergedmels=0 --variant packed=1,prefill=1,mergedmels=1 \
        --variant packed=1,prefill=1,mergedmels=1,switch=0.0005 \
        --audio "$ASSETS/audio/hifitts-6097" --tiktoken "$ASSETS/whisper-assets/multilingual.tiktoken"
    if [ "${AB_BENCH:-1}" = 1 ]; then  # AB_BENCH=0: the tests and the profile only
        VOXSERVE_SCATTER_KERNEL=0 bench400 packed-prefill-index-put --packed-prefill
        bench400 packed-prefill-scatter-kernel --packed-prefill
    fi
elif [ "$MODE" = overlap ]; then
    part 150 tests-overlap python3 -m pytest -q -m gpu tests/gpu/test_engine_cuda.py \
        -k "${OVERLAP_TESTS:-reference_fp32_with_graphs or overlapped or audio_windows or never_waits}" \
        -p no:cacheprovider --durations=5 -rfE
    # one admission's host time alone, and every synchronising call in its launch (stop 26: six in
    # PolicyState.reset, since replaced)
    [ "${OVERLAP_ALONE:-1}" = 1 ] && part 110 profile-admission python3 bench/profile_admission.py --turns 25 \
        --tiktoken "$ASSETS/whisper-assets/multilingual.tiktoken"
    if [ "${OVERLAP_PHASES:-0}" = 1 ]; then
        part 200 profile-phases-400-overlap python3 bench/profile_streams.py --streams 400 --seconds 8 --phases \
            --stacks --overlap-admissions --variant packed=1,prefill=1,overlap=1 \
            --variant packed=1,prefill=1,overlap=0 --audio "$ASSETS/audio/hifitts-6097" \
            --tiktoken "$ASSETS/whisper-assets/multilingual.tiktoken"
    fi
    [ "${OVERLAP_BENCH:-1}" = 1 ] && bench_streams 200 bench-streams-overlap "${OVERLAP_STREAMS:-300,400,500,600}" \
        --packed-prefill --overlap-admissions
    [ "${OVERLAP_BENCH:-1}" = 1 ] && [ "${OVERLAP_SERIAL:-1}" = 1 ] && bench400 serial --packed-prefill
    # windows padded to whole seconds (15% fewer encoder positions than 1,2,4,8,16 s by arithmetic over the
    # manifest; but demo-model WER 7.6 -> 16.4% over 160 utterances, stop 27), every length's log-mels in one transform
    [ "${OVERLAP_BUCKETS:-0}" = 1 ] && VOXSERVE_MERGED_MELS=1 bench400 buckets-1s --packed-prefill \
        --overlap-admissions --window-buckets 1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16
elif [ "$MODE" = live-step ]; then
    part 150 profile-live-step python3 bench/profile_step.py --live --dims large-v3 \
        --tiktoken "$ASSETS/whisper-assets/multilingual.tiktoken"
    bench_streams 200 bench-streams-overlap "${LIVE_STREAMS:-150,200,250}" --packed-prefill --overlap-admissions
    VOXSERVE_MERGED_MELS=1 bench400 buckets-1s --packed-prefill --overlap-admissions \
        --window-buckets 1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16
elif [ "$MODE" = mels-kv-ab ]; then
    part 90 attention-sweep-live python3 bench/profile_step.py --live-sweep
    part 100 tests-packed-prefill python3 -m pytest -q -m gpu tests/gpu/test_engine_cuda.py -k packed_prefill \
        -p no:cacheprovider --durations=5 -rfE
    # the default window lengths (1 s steps cost the demo model twice the WER: bench/README.md)
    VOXSERVE_MERGED_MELS=0 bench400 overlap --packed-prefill --overlap-admissions
    VOXSERVE_MERGED_MELS=1 bench400 overlap-merged --packed-prefill --overlap-admissions
    VOXSERVE_MERGED_MELS=1 bench400 overlap-merged-int8kv --packed-prefill --overlap-admissions --cross-kv int8
    VOXSERVE_MERGED_MELS=0 bench400 overlap-int8kv --packed-prefill --overlap-admissions --cross-kv int8
    # shellcheck disable=SC2086  # AB_FLAGS: several flags
    [ -z "${AB_STREAMS:-}" ] || bench_streams 200 bench-streams-overlap "$AB_STREAMS" --packed-prefill \
        --overlap-admissions ${AB_FLAGS:-}
elif [ "$MODE" = encoder ]; then
    part 150 tests-engine-live python3 -m pytest -q -m gpu tests/gpu/test_engine_cuda.py \
        -k "reference_fp32_with_graphs or overlapped or audio_windows or never_waits or packed_prefill" \
        -p no:cacheprovider --durations=5 -rfE
    part 150 profile-encoder python3 bench/profile_encoder.py --tiktoken "$ASSETS/whisper-assets/multilingual.tiktoken"
    bench_streams 200 bench-streams "${ENCODER_STREAMS:-150,200,250}" --packed-prefill
elif [ "$MODE" = fold ]; then
    if [ "${FOLD_PART:-all}" != bench ]; then  # the profile first: it is short, and the tests may be cut off
        part 120 profile-encoder python3 bench/profile_encoder.py --tiktoken "$ASSETS/whisper-assets/multilingual.tiktoken"
        part 240 tests-fold python3 -m pytest -q -m gpu tests/gpu/test_quant_cuda.py tests/gpu/test_engine_cuda.py \
            -k "row_quantize or folds or packed_encoder or replays or compiles or gate" -p no:cacheprovider -s \
            --durations=8 -rfE
        if [ -d "$ASSETS/speech-cache" ]; then  # the demo model's WER with the fp16 and the fp8 encoder
            for enc in fp16 fp8; do
                part 150 "window-accuracy-$enc" python3 -m voxserve.live.window_accuracy --n "${FOLD_N:-160}" --device cuda \
                    --speech-cache "$ASSETS/speech-cache" --text "$ASSETS/text/ljspeech-metadata.csv" --out "$OUT" \
                    $([ $enc = fp8 ] && echo --encoder-precision fp8)
            done
        fi
    fi
    if [ "${FOLD_PART:-all}" != tests ]; then
        for round in $(seq "${FOLD_ROUNDS:-1}"); do
            bench_streams 120 "bench-streams-fp16-$round" "${FOLD_STREAMS:-200}" --packed-prefill
            bench_streams 120 "bench-streams-fp8-encoder-$round" "${FOLD_STREAMS:-200}" --packed-prefill \
                --encoder-precision fp8
        done
    fi
elif [ "$MODE" = process ]; then
    # in order of need; a 600 s call ends somewhere in the last two (the benches take ~2 min each)
    if [ "${PROC_TESTS:-1}" = 1 ]; then
        part 240 tests-fold python3 -m pytest -q -m gpu tests/gpu/test_quant_cuda.py tests/gpu/test_engine_cuda.py \
            -k "row_quantize or folds or packed_encoder or replays or compiles or gate" -p no:cacheprovider \
            --durations=8 -rfE
    fi
    for round in $(seq "${PROC_ROUNDS:-1}"); do
        bench_streams 150 "bench-streams-thread-$round" "${PROC_STREAMS:-200,300}" --packed-prefill
        bench_streams 150 "bench-streams-process-$round" "${PROC_STREAMS:-200,300}" --packed-prefill --engine-process
        bench_streams 150 "bench-streams-fp8-encoder-$round" "${PROC_STREAMS:-200,300}" --packed-prefill \
            --encoder-precision fp8
    done
    part 120 profile-encoder python3 bench/profile_encoder.py --tiktoken "$ASSETS/whisper-assets/multilingual.tiktoken"
elif [ "$MODE" = trees-ab ]; then
    for round in $(seq "${AB_ROUNDS:-2}"); do
        bench_streams 120 "bench-streams-head-$round" "${AB_STREAMS:-200}" --packed-prefill
        for tree in ${AB_TREES:-}; do
            name=$(basename "$tree" .tar)
            dir=/tmp/ab-$name
            if [ ! -d "$dir" ]; then
                mkdir -p "$dir" && tar -xf "$tree" -C "$dir" && ln -s "$PWD/$ASSETS" "$dir/$ASSETS" || exit 2
            fi
            (cd "$dir" && PYTHONPATH=$dir:$PYTHONPATH bench_streams 120 "bench-streams-$name-$round" \
                "${AB_STREAMS:-200}" --packed-prefill)
        done
    done
elif [ "$MODE" = serve-process ]; then
    if [ "${SP_TESTS:-1}" = 1 ]; then
        part 150 tests-serve-process python3 -m pytest -q -m gpu tests/gpu/test_quant_cuda.py \
            tests/gpu/test_engine_cuda.py tests/server/test_engine_process.py -k "folds or engine_process" \
            -p no:cacheprovider --durations=8 -rfE
    fi
    for round in $(seq "${SP_ROUNDS:-1}"); do
        for where in thread process; do
            bench_streams 200 "bench-streams-server-$where-$round" "${SP_STREAMS:-250}" --packed-prefill \
                --transport server \
                $([ $where = process ] && echo --engine-process)
        done
    done
elif [ "$MODE" = host ]; then
    part 40 cpu-contention python3 bench/cpu_contention.py --threads-list 16,1
    # torch's threads for the whole process (log-mel workers included), 16 against 1, alternating, one engine
    for streams in 100 200; do
        part 270 "profile-streams-threads-$streams" python3 bench/profile_streams.py --streams $streams \
            --seconds 10 --audio "$ASSETS/audio/hifitts-6097" \
            --tiktoken "$ASSETS/whisper-assets/multilingual.tiktoken" --variant torchthreads=16 \
            --variant torchthreads=1 --variant torchthreads=16 --variant torchthreads=1
    done
else
    echo "unknown mode $MODE (tests, perf, streams, streams-ab, phases, kernels-ab, overlap, live-step, mels-kv-ab, encoder, fold, process, serve-process, trees-ab or host)" >&2
    exit 2
fi
