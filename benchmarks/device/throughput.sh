#!/bin/bash
# UNet throughput on a lent GPU in one call (≤ 9 minutes): SD1.5-shaped (512 px, 16 frames, CFG batch 2) and aa-tiny
# UNet evals/s and % of the card's measured fp16 peak for torch eager, torch.compile, onnxruntime CUDA and TensorRT
# fp16 (a backend whose package the machine lacks is reported as skipped, with the reason), then the TensorRT refit
# check (a refittable engine serving two identity adapters, parity against eager after each refit) when TensorRT is
# there. Results: $OUT/results/throughput_<gpu>.{md,json} and $OUT/refit.log.
#
# Here, before the call: benchmarks/device/base_train.sh --fetch   (the same wheels, into .device-wheels/)
# Then, through the device tool, carry [".device-wheels"] and run:  OUT=$OUT benchmarks/device/throughput.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
source benchmarks/device/setup.sh
mkdir -p /tmp/aa-throughput
$PY - <<'PY' | tee -a "$OUT/device.txt"
import importlib.util as u
for m in ("onnxruntime", "tensorrt"):
    print(m, "present" if u.find_spec(m) else "absent (its rows are skipped)")
PY
# 1. throughput: 6 minutes at most
timeout 360 $PY -m benchmarks.bench throughput --scenarios sd15-512px-16f,aa-tiny-64px \
    --backends torch,torch-compile,onnxruntime,tensorrt --device cuda --merge-ranks 4,16 -o /tmp/aa-throughput \
    2>&1 | tee "$OUT/throughput.log" | tail -20 || true
for ext in md json; do
    [ -f /tmp/aa-throughput/throughput.$ext ] && cp /tmp/aa-throughput/throughput.$ext "$OUT/results/throughput_$TAG.$ext"
done
# 2. TensorRT refit: one refittable engine, two identities, parity after each refit (skipped without TensorRT)
timeout 120 $PY -m pytest -q tests/test_export.py -k refittable -rs 2>&1 | tee "$OUT/refit.log" | tail -5 || true
echo "wall $(( $(date +%s) - START )) s" | tee -a "$OUT/device.txt"
