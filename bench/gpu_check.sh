#!/bin/bash
# One device-machine session's standard run, in priority order, each part under its own time limit so that a
# slow part cannot starve the rest: the GPU tests (engine and quantization first, then the fused kernels, whose
# Triton tuning takes minutes on a fresh machine), the step profile, then `voxserve bench` of the default engine
# against the unfused one: 560 s of limits in all, inside one 600 s device call. Results and logs go to $OUT
# (the device tool copies them back).
#
#   bash bench/gpu_check.sh [ASSETS]    ASSETS: a folder with whisper-assets/ and audio/hifitts-6097/
#                                       (default .devdata; VOXSERVE_SHARED_DATA is set to it for the tests)
set -u
ASSETS=${1:-.devdata}
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
export VOXSERVE_SHARED_DATA=$PWD/$ASSETS PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
T0=$SECONDS
part() {  # part LIMIT_S NAME COMMAND...: run, keep the whole log under $OUT, print its tail
    local limit=$1 name=$2
    shift 2
    echo "=== [$((SECONDS - T0)) s] $name (limit $limit s)"
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    echo "=== $name: exit $? after $((SECONDS - T0)) s"
    tail -n 25 "$OUT/$name.log"
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
part 150 tests-engine python3 -m pytest -q -m gpu tests/gpu/test_engine_cuda.py tests/gpu/test_quant_cuda.py \
    tests/parity tests/unit --ignore=tests/unit/test_audio_io.py -p no:cacheprovider --durations=10
part 210 tests-fused python3 -m pytest -q -m gpu tests/gpu/test_fused_cuda.py -p no:cacheprovider --durations=10
part 90 profile python3 bench/profile_step.py --projections --dims large-v3 \
    --tiktoken "$ASSETS/whisper-assets/multilingual.tiktoken"
part 110 bench python3 -m voxserve bench --suite all --dims large-v3 --device cuda --precision fp16 --peers none \
    --batch 64 --n-inputs 64 --step-batches 1,8,64 --repeats 3 --subject engine,engine-unfused \
    --audio "$ASSETS/audio/hifitts-6097" --tiktoken "$ASSETS/whisper-assets/multilingual.tiktoken" \
    --cache /tmp/vb --out "$OUT"
