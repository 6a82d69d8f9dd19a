#!/usr/bin/env bash
# Prepare the wheels the borrowed GPU machine lacks, for bench/gpu_acceptance.py and `import trainables.*`.
#
# The GPU machine has Python 3.12 with torch, torchvision, numpy, pillow, scipy, pandas, einops,
# torch-geometric, pyyaml, ... preinstalled, no network, and at most 64 MiB travelling per command
# (code, data and wheels together). What it lacks travels as cp312 manylinux wheels in .device/wheels
# (ignored by git); Ray and MLflow stay behind: the GPU code paths never import them.
#
#   bash bench/gpu_wheels.sh            # here, with network: fills .device/wheels, checks the size
#
# then on the GPU machine (carry .device), from the repository root:
#
#   python3 -m pip install -q --no-index --no-deps --find-links .device/wheels .device/wheels/*.whl \
#     && python3 -m pip install -q --no-deps --no-build-isolation -e . \
#     && python bench/gpu_acceptance.py
#
# Versions are the ones installed here (the same the tests ran with), so both machines agree.
set -euo pipefail

cd "$(dirname "$0")/.."
DEST=.device/wheels
LIMIT_MIB=64
PYTHON=${PYTHON:-python3}

# Missing on the GPU machine (see /work/.library/device/KINDS.md's package list): CompressAI and
# what it and trainables.* import that the image does not hold, plus bjontegaard and pyyaml for
# the search package's other imports.
PACKAGES=(compressai PyWavelets pytorch-msssim pydantic pydantic-core annotated-types typing-inspection
          bjontegaard pyyaml)

pins=()
for name in "${PACKAGES[@]}"; do
    version=$("$PYTHON" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")
    pins+=("$name==$version")
done

rm -rf "$DEST"
mkdir -p "$DEST"
# pip matches the manylinux tag exactly: list the ones these projects publish for cp312.
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any -d "$DEST" "${pins[@]}"

ls -1 "$DEST"
bytes=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
tree_bytes=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
total=$((bytes + tree_bytes))
printf 'wheels: %.1f MiB; tracked files: %.1f MiB; together %.1f MiB (limit %d MiB per command)\n' \
    "$(echo "$bytes / 1048576" | bc -l)" "$(echo "$tree_bytes / 1048576" | bc -l)" \
    "$(echo "$total / 1048576" | bc -l)" "$LIMIT_MIB"
if (( total >= LIMIT_MIB * 1048576 )); then
    echo "error: wheels and checkout exceed ${LIMIT_MIB} MiB" >&2
    exit 1
fi
echo "install on the GPU machine:"
echo "  python3 -m pip install -q --no-index --no-deps --find-links $DEST $DEST/*.whl && python3 -m pip install -q --no-deps --no-build-isolation -e ."
