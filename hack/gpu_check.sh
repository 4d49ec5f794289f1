#!/usr/bin/env bash
# The GPU check: QLoRA (4-bit NF4, double quant) on a ~1B Llama shape, the fit estimate against
# torch.cuda.max_memory_allocated on 1B and 8B shapes, bf16 LoRA with packing vs the padded
# baseline on 1B and 8B shapes (tokens/s, MFU, peak memory), the merged-adapter save; JSON results.
# Made for one H100/H200 without package registries, finishing in under 8 minutes:
#
#   bash hack/gpu_wheels.sh                      # beforehand, where PyPI is reachable: .whl/ (< 64 MiB)
#   bash hack/gpu_check.sh [RESULTS_DIR]         # on the GPU machine, from the repo root ($OUT by default)
#   PYTHON=.venv/bin/python bash hack/gpu_check.sh --dry-run [DIR]   # tiny shapes, any machine (CPU: LoRA for QLoRA)
#
# The machine must have python3 with torch, transformers, peft and accelerate; the wheels in .whl/ add what
# the trainer needs beyond them (trl, bitsandbytes, datasets, pydantic, ...), installed into a scratch
# folder, never into the system. Results: RESULTS_DIR/gpu-check.json (+ bench-1b.json, bench-8b.json).
set -euo pipefail
cd "$(dirname "$0")/.."

DRY=()
if [[ "${1:-}" == "--dry-run" ]]; then
    DRY=(--dry-run)
    shift
fi
RESULTS=${1:-${OUT:-gpu-check-results}}
PYTHON=${PYTHON:-python3}
SITE=${SITE:-$(mktemp -d /tmp/kubetune-gpu-site.XXXXXX)}

# The dry run uses the interpreter's own packages (e.g. PYTHON=.venv/bin/python); WHEELS=1 installs .whl/ anyway.
if [[ ${#DRY[@]} -eq 0 || "${WHEELS:-0}" == 1 ]] && compgen -G ".whl/*.whl" > /dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
elif [[ ${#DRY[@]} -eq 0 ]]; then
    echo "no wheels in .whl/: run bash hack/gpu_wheels.sh first (where PyPI is reachable)" >&2
    exit 2
fi
export PYTHONPATH="$PWD/operator:$PWD/trainer_image:$PWD/hack:${PYTHONPATH:-}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONUNBUFFERED=1
mkdir -p "$RESULTS"
"$PYTHON" -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__,
    "cuda", torch.cuda.is_available() and torch.cuda.get_device_name())'
exec "$PYTHON" hack/gpu_check.py --out "$RESULTS" "${DRY[@]}"
