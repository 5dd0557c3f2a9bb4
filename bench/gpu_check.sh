#!/usr/bin/env bash
# The GPU check on a host whose Python has torch and accelerate and no network: installs the wheels that
# scripts/gpu-wheels.sh fetched (carried with the checkout in .gpu-wheels/) into a throwaway folder that the system's
# Python reads before its own packages, then runs bench/gpu_check.py with the arguments given.
#
#     bash bench/gpu_check.sh [--device cpu] [gpu_check.py's options]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WHEELS=.gpu-wheels
SITE=${GPU_CHECK_SITE:-$(mktemp -d)/site}

if ! compgen -G "$WHEELS/*.whl" >/dev/null; then
  echo "no wheels in $WHEELS: run scripts/gpu-wheels.sh on a machine with network, and carry $WHEELS along" >&2
  exit 2
fi
"$PYTHON" -c 'import torch, accelerate; print(f"host: torch {torch.__version__}, accelerate {accelerate.__version__}")'
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "the wheels are built for Python 3.11, and $PYTHON is $("$PYTHON" -V): set PYTHON to a Python 3.11 with torch" >&2
  exit 2
fi
# --no-deps: the wheels are the exact list; torch and the packages it needs stay the host's own.
"$PYTHON" -m pip install --quiet --disable-pip-version-check --no-index --no-deps --find-links "$WHEELS" \
  --target "$SITE" "$WHEELS"/*.whl
PYTHONPATH="$SITE:$PWD" exec "$PYTHON" -m bench.gpu_check "$@"
