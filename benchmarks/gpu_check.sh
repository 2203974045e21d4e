#!/usr/bin/env bash
# The GPU check: extraction tokens/s on CUDA against a bare forward pass, torchdr UMAP up to 2M
# points against umap-learn, joint normalisation on cupy against numpy, a demo job; JSON in OUT.
#
#   bash benchmarks/gpu_wheels.sh .whl                      # beforehand, where pip reaches PyPI
#   bash benchmarks/gpu_check.sh [.whl] [benchmarks/out/gpu]   # on the GPU machine, repository root
#
# Needs one CUDA GPU with torch, cupy, transformers, pyarrow, numpy and scikit-learn installed; the
# rest comes from the wheel folder, installed into a temporary folder (nothing system-wide).
# GPU_CHECK_ARGS adds options of `python -m benchmarks.gpu` (--help). About 7 minutes on one H100;
# never more than 8: the sections that may run long have their own limits, and the whole is stopped
# at 450 s with the sections done so far in gpu.json.
set -euo pipefail
wheels=${1:-.whl}
out=${2:-benchmarks/out/gpu}
site=$(mktemp -d)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$wheels"/*.whl
export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
model=minilm
if [ -d "$wheels/minilm" ]; then model="$wheels/minilm"; fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
mkdir -p "$out"
timeout 450 python3 -m benchmarks.gpu --model "$model" --out "$out" ${GPU_CHECK_ARGS:-} 2>&1 | tee "$out/log.txt"
