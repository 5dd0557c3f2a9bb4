#!/usr/bin/env bash
# Wheels that bench/gpu_check.sh installs on a GPU host that has torch and accelerate but no network: the packages of
# scripts/gpu-wheels.txt at the versions of constraints.txt, for CPython 3.11 on manylinux x86_64, into .gpu-wheels/.
# They travel with the checkout (carry ".gpu-wheels"), 64 MiB in all. bitsandbytes' wheel (QLoRA) holds a CUDA library
# for every CUDA version, 41 MiB: only those of BNB_CUDA_LIBS are kept, for the CUDA builds of torch (bitsandbytes
# loads the closest one of the same major version).
#
#     bash scripts/gpu-wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=.gpu-wheels
PIP=${PIP:-.venv/bin/pip}
PYTHON=${PYTHON:-.venv/bin/python}
BNB_CUDA_LIBS=${BNB_CUDA_LIBS:-cuda128 cuda130}

rm -rf "$WHEELS" && mkdir -p "$WHEELS"
"$PIP" download --quiet --disable-pip-version-check --no-deps --only-binary=:all: --dest "$WHEELS" \
  --constraint constraints.txt --requirement scripts/gpu-wheels.txt \
  --python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
  2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
keep=()
for version in $BNB_CUDA_LIBS cpu; do keep+=("bitsandbytes/libbitsandbytes_$version.so"); done
"$PYTHON" scripts/slim_wheel.py "$WHEELS"/bitsandbytes-*.whl "bitsandbytes/libbitsandbytes_*" "${keep[@]}"
du -b "$WHEELS"/*.whl | sort -n | awk '{ printf "%6.1f MiB  %s\n", $1 / 1048576, $2 }'
du -cb "$WHEELS"/*.whl | tail -1 | awk '{ printf "%6.1f MiB  in all, of the 64 MiB that travel with the checkout\n", $1 / 1048576 }'
