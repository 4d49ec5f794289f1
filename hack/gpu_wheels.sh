#!/usr/bin/env bash
# Download, on a machine with PyPI, the wheels hack/gpu_check.sh needs on a GPU machine that has none:
# what a CUDA image with torch, transformers, peft and accelerate (and numpy, pandas, pyarrow, requests,
# aiohttp, xxhash, pyyaml, huggingface-hub, prometheus-client, ...) lacks for the trainer.
#
#   bash hack/gpu_wheels.sh            # into .whl/ (git-ignored), python 3.12 manylinux x86_64
#   PYTHON_VERSION=3.11 bash hack/gpu_wheels.sh
#
# Versions are the repo's pins (constraints.txt). The set must stay under 64 MiB (the limit on what travels
# with a GPU run): the script prints the total and fails above it.
set -euo pipefail
cd "$(dirname "$0")/.."

DEST=${DEST:-.whl}
PYTHON=${PYTHON:-.venv/bin/python}
PYTHON_VERSION=${PYTHON_VERSION:-3.12}
LIMIT_MIB=${LIMIT_MIB:-64}
# trl and bitsandbytes (QLoRA), datasets and what it needs beyond the image (dill, multiprocess), pydantic
# (kubetune.api) and its needs. kopf, kubernetes and pydantic-settings belong to the operator: not needed.
NAMES=(trl bitsandbytes datasets dill multiprocess pydantic pydantic_core annotated-types typing-inspection)

pin() {  # NAME -> NAME==VERSION from constraints.txt (names compared case- and -/_-insensitively)
    local want line
    want=$(echo "$1" | tr 'A-Z_' 'a-z-')
    while IFS= read -r line; do
        [[ "$line" == *==* ]] || continue
        if [[ "$(echo "${line%%==*}" | tr 'A-Z_' 'a-z-')" == "$want" ]]; then
            echo "$line"
            return 0
        fi
    done < constraints.txt
    echo "no pin for $1 in constraints.txt" >&2
    return 1
}

specs=()
for name in "${NAMES[@]}"; do
    specs+=("$(pin "$name")")
done
mkdir -p "$DEST"
rm -f "$DEST"/*.whl
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYTHON_VERSION" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d "$DEST" "${specs[@]}"
ls -l "$DEST"/*.whl | awk '{printf "%8.1f MiB  %s\n", $5 / 1048576, $9}'
total=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
printf 'total: %.1f MiB in %d wheels (limit %d MiB)\n' "$(echo "$total / 1048576" | bc -l)" "$(ls "$DEST"/*.whl | wc -l)" "$LIMIT_MIB"
if (( total > LIMIT_MIB * 1048576 )); then
    echo "the wheels are larger than ${LIMIT_MIB} MiB" >&2
    exit 1
fi
