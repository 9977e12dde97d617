#!/usr/bin/env bash
# The GPU measurement of benchmarks/gpu_scale.py at SD3.5-M's real sizes, as one command for the device
# machine (docs/benchmarks/gpu/README.md): install the diffusers wheel carried in .whl/ (that machine has
# PyTorch, transformers, peft and accelerate, not diffusers, and no network), then measure under a time
# budget. Run from the repository root:
#   bash benchmarks/gpu_scale_setup.sh OUT_DIR [BUDGET_S [more gpu_scale.py options...]]
# OUT_DIR receives gpu_scale.json (rewritten after every run, so a stop keeps what was measured),
# log.txt and nvidia-smi.txt. BUDGET_S (default 400) counts from the Python process's start; pip's
# install comes before it, so the whole command ends well inside 8 minutes.
set -euo pipefail
out="${1:?usage: gpu_scale_setup.sh OUT_DIR [BUDGET_S [gpu_scale.py options...]]}"
budget="${2:-400}"
shift $(( $# < 2 ? $# : 2 ))
mkdir -p "$out"
wheels=(.whl/diffusers-*.whl)
if [ ! -f "${wheels[0]}" ]; then
    echo "gpu_scale_setup: no .whl/diffusers-*.whl; here first: pip download diffusers==0.42.1 --no-deps -d .whl," \
         "then carry .whl" >&2
    exit 2
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "${wheels[@]}"
export PYTHONPATH="/tmp/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv >"$out/nvidia-smi.txt" 2>&1 || true
python3 -c "import diffusers, peft, torch, transformers; print('diffusers', diffusers.__version__, '| transformers',
transformers.__version__, '| peft', peft.__version__, '| torch', torch.__version__, '|', torch.cuda.get_device_name(0))" \
    2>&1 | tee "$out/log.txt"
python3 benchmarks/gpu_scale.py --scale sd35m --out "$out" --budget-s "$budget" --peak-tflops 790 "$@" 2>&1 \
    | tee -a "$out/log.txt"
