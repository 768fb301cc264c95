#!/usr/bin/env bash
# Run ON THE GPU MACHINE by the device tool, in the repo root, after stage.sh here:
#   run(command="MODEL=small SIZE=256 MINUTES=7 bash tools/gpu_lease/device.sh", carry=[".lease"], timeout_s=600)
# Trains with `facerestore train` under a time limit, validates on the fixed severities with ArcFace
# identity, ships the best validated step (ship_snapshot --step best) as fp16 and brings it back in
# pieces of at most 15 MiB (the tool returns 8 files of 16 MiB at most). Here, afterwards:
#   cat /work/.device/.../idm.safetensors.part-* > idm.safetensors  (then check the sha256 in idm.json)
set -euo pipefail
: "${OUT:?run this through the device tool}" "${MODEL:=small}" "${SIZE:=256}" "${MINUTES:=7}" "${BATCH:=32}" "${LR:=1e-4}"
: "${EMA:=0.999}" "${VAL_EVERY:=500}" "${WORKERS:=14}" "${EXTRA:=}"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
run=/tmp/lease-run
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || echo "no nvidia-smi"; python3 -c 'import torch; print("torch", torch.__version__)'; } | tee "$OUT/train.log"
# shellcheck disable=SC2086
python3 -m facerestore train .lease/train --out "$run" --model "$MODEL" --size "$SIZE" --amp -b "$BATCH" --lr "$LR" --ema "$EMA" \
    --steps 1000000 --time-limit "${MINUTES}m" --val .lease/val --val-degrade mild,medium,severe --val-identity .lease/w600k_mbf.onnx \
    --val-every "$VAL_EVERY" --save-every "$VAL_EVERY" --keep 0 --workers "$WORKERS" -q $EXTRA 2>&1 | tee -a "$OUT/train.log"
python3 -m facerestore.training.ship_snapshot "$run" --step best --out /tmp/lease-pick 2>&1 | tee -a "$OUT/train.log"
split -b 15M -d /tmp/lease-pick/idm.safetensors "$OUT/idm.safetensors.part-"
cp /tmp/lease-pick/idm.json "$run/metrics.jsonl" "$run/config.json" "$OUT/"
