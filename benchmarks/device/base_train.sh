#!/bin/bash
# Base training on a lent GPU in one call (≤ 9 minutes):
#  1. continue models/aa-tiny with the shipped recipe (grounded, person-weighted image steps, then video steps) at a
#     large batch under bf16, on the world plus shards that `aa-train prepare` makes of 8 rendered mp4s (the folder
#     path a user takes), and bring the fp16 bundle back as $OUT/bundle.tgz with the log;
#  2. a few image and video steps of a random SD1.5-shaped base (`--init` an SD1.5 folder + motion module, 1.31 B
#     parameters, 256 px, 8 frames) for its samples/s and peak memory;
#  3. write benchmarks/results/base_training_<gpu>.{md,json} and base_training_sd15_<gpu>.{md,json} into $OUT/results.
# The tiny bundle is then measured on the CPU like any other candidate:
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
source benchmarks/device/setup.sh
# the folder path a user takes: mp4s (with sidecars) → aa-train prepare → shards
$PY - <<'PY'
from aa_world.clips import ClipSpec, render_clip, write_clip
for s in range(8):
    write_clip(render_clip(ClipSpec(identity_seed=s, scene="beach", scene_seed=s, motion="dance", objects=(), frames=16,
                                    fps=8.0, width=96, height=96, seed=s)), f"/tmp/aa-videos/c{s}.mp4")
PY
$PY -m aa_train.cli prepare --data videos:/tmp/aa-videos -o /tmp/aa-shards --size 64 --frames 8 2>&1 | tail -2
# 1. 5½ minutes of tiny-base training at most, whatever the step counts (they are a ceiling, the timeout the budget)
timeout 330 $PY -m aa_train.cli base --data world:4000 --data shards:/tmp/aa-shards@0.05 -o "$OUT/bundle" \
    --work-dir /tmp/aa-work --init models/aa-tiny --stages image,video --image-steps "$IMAGE_STEPS" \
    --video-steps "$VIDEO_STEPS" --image-batch 256 --video-batch 32 --lr 3e-4 --warmup 30 --checkpoint-every 200 \
    --mixed-precision bf16 --denoise-person-weight 4 --grounding-token-weight 0.2 --grounding-pixel-weight 0.02 \
    --grounding-pixel-regions person --no-gradient-checkpointing --threads 8 2>&1 | tee "$OUT/train.log" | grep -v "^\s*$" | tail -30 || true
if [ -f "$OUT/bundle/aa_bundle.json" ]; then
    $PY -m benchmarks.base_training "$OUT/bundle" --log "$OUT/train.log" --device "$GPU" \
        --name "base_training_$TAG" && cp benchmarks/results/base_training_"$TAG".* "$OUT/results/"
    tar -czf "$OUT/bundle.tgz" -C "$OUT" bundle && rm -rf "$OUT/bundle"
else
    echo "no bundle: the run stopped before the video stage finished (see train.log)" | tee -a "$OUT/device.txt"
fi
# 2. a random SD1.5-shaped base: a few steps of each stage for samples/s and peak memory
timeout 150 $PY - <<'PY' || true
from benchmarks.sd15_shapes import write_random_sd15_folder
write_random_sd15_folder("/tmp/aa-sd15", "models/aa-tiny/tokenizer")
PY
timeout 150 $PY -m aa_train.cli base --data world:16 --init /tmp/aa-sd15 --motion-module /tmp/aa-sd15/motion \
    -o /tmp/aa-sd15-out --work-dir /tmp/aa-sd15-work --size 256 --frames 8 --stages image,video --image-steps 10 \
    --video-steps 5 --image-batch 8 --video-batch 1 --warmup 1 --checkpoint-every 1000 --mixed-precision bf16 \
    --threads 8 2>&1 | tee "$OUT/train_sd15.log" | grep -v "^\s*$" | tail -8 || true
if [ -f /tmp/aa-sd15-out/aa_bundle.json ]; then
    $PY -m benchmarks.base_training /tmp/aa-sd15-out --log "$OUT/train_sd15.log" --device "$GPU" \
        --name "base_training_sd15_$TAG" && cp benchmarks/results/base_training_sd15_"$TAG".* "$OUT/results/"
fi
echo "wall $(( $(date +%s) - START )) s" | tee -a "$OUT/device.txt"
