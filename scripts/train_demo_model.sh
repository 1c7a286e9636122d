#!/usr/bin/env bash
# Trains voxserve's demo model (see voxserve/assets/demo-model/README.md) on a CUDA machine.
#   scripts/train_demo_model.sh data  WORK DEBS   # unpack espeak-ng from Debian packages in DEBS, synthesise WORK/data
#   scripts/train_demo_model.sh train WORK MINUTES # train (or resume) WORK/run for at most MINUTES
#   scripts/train_demo_model.sh eval  WORK         # held-out WER of WORK/run/final, per item, into WORK/eval.json
# Needs the LJSpeech metadata and Whisper's multilingual.tiktoken in $DATA (default ../shared/data layout).
set -euo pipefail
phase=$1 work=$2
DATA=${DATA:-../shared/data}
TEXT=${TEXT:-$DATA/text/ljspeech-metadata.csv}
TIKTOKEN=${TIKTOKEN:-$DATA/whisper-assets/multilingual.tiktoken}
STEPS=${STEPS:-11000}
case $phase in
data)
  if ! command -v espeak-ng >/dev/null; then
    e=$work/espeak && mkdir -p "$e" && for f in "$3"/*.deb; do dpkg -x "$f" "$e"; done
    lib=$e/usr/lib/x86_64-linux-gnu
    export ESPEAK_NG=$e/usr/bin/espeak-ng ESPEAK_DATA_PATH=$lib ESPEAK_NG_LIBRARY_PATH=$lib:$e/lib/x86_64-linux-gnu:$lib/pulseaudio
  fi
  ${PY:-python3} -m voxserve synth --text "$TEXT" --out "$work/data" --extra-generated 12000 --variants-per-sentence 2 \
    --holdout 400 --workers "$(nproc)" --quiet ;;
train)
  init=(--init-dims demo --tokenizer "$TIKTOKEN")
  [ -d "$work/run/checkpoints" ] && init+=(--resume)
  ${PY:-python3} -m voxserve train --train "$work/data/train.jsonl" --eval "$work/data/heldout.jsonl" --out "$work/run" \
    "${init[@]}" --steps "$STEPS" --batch-size 64 --lr 1.5e-3 --warmup 500 --ctc-weight 0.3 \
    --max-minutes "$3" --keep-schedule --eval-every 2000 --eval-limit 200 --save-every 1000 --log-every 100 \
    --timestamps-prob 0.5 --pack-prob 0.5 --noise-prob 0.2 --telephone-prob 0.1 --gain-prob 0.3 --quiet ;;
eval)
  ${PY:-python3} -m voxserve eval --model "$work/run/final" --manifest "$work/data/heldout.jsonl" --batch-size 100 \
    --per-item "$work/eval-heldout.jsonl" | tee "$work/eval.txt" ;;
*) echo "unknown phase $phase" >&2; exit 2 ;;
esac
