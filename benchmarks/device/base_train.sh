#!/bin/bash
# Base training on a lent GPU in one call (≤ 9 minutes): continue models/aa-tiny with the shipped recipe (grounded,
# person-weighted image steps, then video steps) at a large batch under bf16 autocast, and bring the fp16 bundle back
# as $OUT/bundle.tgz with the log. The bundle is then measured on the CPU like any other candidate:
#   benchmarks/quality.py base --base BUNDLE && benchmarks/quality.py attention --base BUNDLE
#
# Here, before the call (the device machine reaches no package index; its python3 has torch, accelerate and numpy):
#   benchmarks/device/base_train.sh --fetch        # the missing wheels into .device-wheels/ (git-ignored, ~25 MB)
# Then, through the device tool, carry [".device-wheels"] and run:
#   OUT=$OUT benchmarks/device/base_train.sh [IMAGE_STEPS VIDEO_STEPS]
set -euo pipefail
cd "$(dirname "$0")/../.."
WHEELS=.device-wheels
if [ "${1:-}" = "--fetch" ]; then
    mkdir -p "$WHEELS"
    # pure-Python wheels and the tokenizers build for the device's CPython 3.12 (x86-64 manylinux)
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$WHEELS" \
        diffusers==0.42.1 peft==0.21.2 transformers==5.23.0 tokenizers==0.23.3 click==8.5.1 \
        huggingface_hub==2.4.0 safetensors==0.8.0 tqdm==4.70.1
    du -sh "$WHEELS"
    exit 0
fi
IMAGE_STEPS=${1:-2000}
VIDEO_STEPS=${2:-600}
OUT=${OUT:?set OUT to the folder that comes back}
PY=${PY:-python3}
START=$(date +%s)
$PY -m pip install -q --no-index --no-deps --find-links "$WHEELS" "$WHEELS"/*.whl 2>&1 | tail -2
export PYTHONPATH=$PWD HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/device.txt"
# 7 minutes of training at most, whatever the step counts: the step counts are a ceiling, the timeout the budget
timeout 420 $PY -m aa_train.cli base --data world:4000 -o "$OUT/bundle" --work-dir /tmp/aa-work \
    --init models/aa-tiny --stages image,video --image-steps "$IMAGE_STEPS" --video-steps "$VIDEO_STEPS" \
    --image-batch 256 --video-batch 32 --lr 3e-4 --warmup 30 --checkpoint-every 200 --mixed-precision bf16 \
    --denoise-person-weight 4 --grounding-token-weight 0.2 --grounding-pixel-weight 0.02 \
    --grounding-pixel-regions person --threads 8 2>&1 | tee "$OUT/train.log" | grep -v "^\s*$" | tail -40 || true
if [ -f "$OUT/bundle/aa_bundle.json" ]; then
    tar -czf "$OUT/bundle.tgz" -C "$OUT" bundle && rm -rf "$OUT/bundle"
else
    echo "no bundle: the run stopped before the video stage finished (see train.log)" | tee -a "$OUT/device.txt"
fi
echo "wall $(( $(date +%s) - START )) s" | tee -a "$OUT/device.txt"
