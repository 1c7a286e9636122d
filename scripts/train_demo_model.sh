#!/usr/bin/env bash
# Trains voxserve's demo model (see voxserve/assets/demo-model/README.md) on a CUDA machine.
#   scripts/train_demo_model.sh data  WORK DEBS    # unpack espeak-ng from Debian packages in DEBS, synthesise WORK/data
#   scripts/train_demo_model.sh train WORK MINUTES # train (or resume) WORK/run for at most MINUTES
#   scripts/train_demo_model.sh eval  WORK         # held-out WER of WORK/run/final, per item, into WORK/eval.json
# Needs the LJSpeech metadata and Whisper's multilingual.tiktoken in $DATA (default ../shared/data layout).
#
# Recipe (2026-12-04, for a ~20 GPU-minute session: data ~3 min, train 12, eval ~1):
# The interim model (37.7 % held-out WER) learnt its 24,655 training sentences by heart: on CPU it transcribes new
# renderings of training sentences at 2.3 % WER, held-out LJSpeech prose at 67 %, sentences spliced from training
# text at 45 % and lists of training-corpus words at 116 % (24 utterances each), completing remembered sentences
# ("amidst the noxious effluvia" -> "amidst the dense throng"). Its decoder has learnt the sentences, not to read
# the audio word by word. So:
# - data: each sentence rendered once (--variants-per-sentence 1) and 80,000 new training sentences recombined
#   from the training text (--extra-mixed: spliced word runs, mixed clauses, word lists; textmix.py), so that no
#   continuation can be guessed from a sentence's start and every corpus word is heard in new company. About 170 h
#   of audio (~2.7 min of synthesis on 16 cores, ~20 GB on the GPU). The held-out split is made before the mixing,
#   from the same sentences and seed as before: the same 400 held-out sentences as the interim model's 37.7 %.
# - train: continued from the interim model (its encoder already hears: CTC 0.19 nats/char), 12 minutes at
#   lr 8e-4, with decoder dropout 0.1 (encoder 0.05) and label smoothing 0.1 against memorising and
#   over-confident continuations (the hybrid CTC/attention recipes use both), CTC weight 0.3 kept so the encoder
#   keeps its own listening signal, and light SpecAugment: two frequency masks of up to 15 of 80 mel bins, and
#   only short (<= 0.1 s) time masks, 0.3 a second, since long time masks would teach the decoder to fill gaps
#   from memory. INIT=scratch trains from scratch instead (CTC weight 0.5 falling to 0.2, lr 1.5e-3).
# Measured (2026-12-04, H200): data 160 s, then 4.3 minutes of training (3,212 steps) gave 9.33 % WER on the 400
# held-out utterances (15.3 % on the LJSpeech half, 0.4 % on the number half): see the model card.
set -euo pipefail
phase=$1 work=$2
DATA=${DATA:-../shared/data}
TEXT=${TEXT:-$DATA/text/ljspeech-metadata.csv}
TIKTOKEN=${TIKTOKEN:-$DATA/whisper-assets/multilingual.tiktoken}
STEPS=${STEPS:-30000}   # an upper bound: --max-minutes stops the run and the cosine is fitted to end there
MIXED=${MIXED:-80000}   # recombined training sentences
INIT=${INIT:-voxserve/assets/demo-model}  # or "scratch"
TRAIN_ARGS=${TRAIN_ARGS:-}  # more `voxserve train` options, e.g. --keep-schedule for the first of two sessions
case $phase in
data)
  if ! command -v espeak-ng >/dev/null; then
    e=$work/espeak && mkdir -p "$e" && for f in "$3"/*.deb; do dpkg -x "$f" "$e"; done
    lib=$e/usr/lib/x86_64-linux-gnu
    export ESPEAK_NG=$e/usr/bin/espeak-ng ESPEAK_DATA_PATH=$lib ESPEAK_NG_LIBRARY_PATH=$lib:$e/lib/x86_64-linux-gnu:$lib/pulseaudio
  fi
  ${PY:-python3} -m voxserve synth --text "$TEXT" --out "$work/data" --extra-generated 12000 --extra-mixed "$MIXED" \
    --variants-per-sentence 1 --holdout 400 --workers "$(nproc)" --quiet ;;
train)
  if [ "$INIT" = scratch ]; then
    init=(--init-dims demo --tokenizer "$TIKTOKEN" --lr 1.5e-3 --warmup 500 --ctc-weight 0.5 --ctc-weight-end 0.2)
  else
    init=(--init-from "$INIT" --lr 8e-4 --warmup 300 --ctc-weight 0.3)
  fi
  [ -d "$work/run/checkpoints" ] && init+=(--resume)
  ${PY:-python3} -m voxserve train --train "$work/data/train.jsonl" --eval "$work/data/heldout.jsonl" --out "$work/run" \
    "${init[@]}" --steps "$STEPS" --batch-size 64 --max-minutes "$3" \
    --dropout 0.1 --encoder-dropout 0.05 --label-smoothing 0.1 \
    --freq-masks 2 --freq-mask-width 15 --time-masks-per-s 0.3 --time-mask-width 0.1 \
    --eval-every 2000 --eval-limit 200 --save-every 1000 --log-every 100 \
    --timestamps-prob 0.5 --pack-prob 0.5 --noise-prob 0.2 --telephone-prob 0.1 --gain-prob 0.3 --quiet $TRAIN_ARGS ;;
eval)
  ${PY:-python3} -m voxserve eval --model "$work/run/final" --manifest "$work/data/heldout.jsonl" --batch-size 100 \
    --per-item "$work/eval-heldout.jsonl" | tee "$work/eval.txt" ;;
*) echo "unknown phase $phase" >&2; exit 2 ;;
esac
