# Sourced by the device scripts, run from the repository root: installs the carried wheels (.device-wheels, made
# here by base_train.sh --fetch), sets PYTHONPATH and offline mode, records the card in $OUT/device.txt and sets
# PY, START, GPU (its name) and TAG (h100, h200, ...: the results' file suffix).
WHEELS=.device-wheels
OUT=${OUT:?set OUT to the folder that comes back}
PY=${PY:-python3}
START=$(date +%s)
$PY -m pip install -q --no-index --no-deps --find-links "$WHEELS" "$WHEELS"/*.whl 2>&1 | tail -2
export PYTHONPATH=$PWD HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/device.txt"
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
TAG=$(echo "$GPU" | tr 'A-Z' 'a-z' | grep -o 'h100\|h200\|a100\|l4\|a10g\|4090' | head -1)
TAG=${TAG:-gpu}
mkdir -p "$OUT/results"
