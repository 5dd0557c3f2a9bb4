#!/usr/bin/env bash
# Wheels that bench/gpu_check.sh installs on a GPU host that has torch and accelerate but no network: exactly the
# import closure of the trainer and the serving engine beyond what torch and accelerate bring, at the versions of
# constraints.txt, for CPython 3.11 on manylinux x86_64. They travel with the checkout (`carry: [".gpu-wheels"]`),
# 64 MiB in all. bitsandbytes (QLoRA) is fetched only with --with-bitsandbytes: its wheel alone is larger than that.
#
#     bash scripts/gpu-wheels.sh [--with-bitsandbytes]
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=.gpu-wheels
PIP=${PIP:-.venv/bin/pip}

# transformers, peft and their own needs (numpy, packaging, psutil, pyyaml, filelock, fsspec come with torch and
# accelerate); accelerate and typing_extensions too, as transformers and pydantic need newer ones than a host may have.
ML="transformers tokenizers huggingface_hub httpx2 httpcore2 h11 anyio idna certifi sniffio truststore safetensors peft
accelerate regex tqdm typing_extensions"
# What our modules import at module level: worker.training.trainer → app.ml.adapter_manifest → app.core.errors and
# app.core.storage, which bring the web, database, queue and S3 clients although the check uses none of them.
APP="structlog fastapi starlette pydantic pydantic_core annotated-types typing-inspection annotated-doc
opentelemetry-api sqlalchemy boto3 botocore jmespath s3transfer python-dateutil six urllib3 kombu amqp vine redis
pydantic-settings python-dotenv"

packages="$ML $APP"
if [[ "${1:-}" == "--with-bitsandbytes" ]]; then
  packages="$packages bitsandbytes"
fi
rm -rf "$WHEELS" && mkdir -p "$WHEELS"
# shellcheck disable=SC2086  # the lists are meant to split into names
"$PIP" download --quiet --no-deps --only-binary=:all: --dest "$WHEELS" --constraint constraints.txt \
  --python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform any $packages
du -b "$WHEELS"/*.whl | sort -n | awk '{ printf "%8.1f MiB  %s\n", $1 / 1048576, $2 }'
du -cb "$WHEELS"/*.whl | tail -1 | awk '{ printf "%8.1f MiB  in all (the carry limit is 64 MiB)\n", $1 / 1048576 }'
