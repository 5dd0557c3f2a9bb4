#!/usr/bin/env bash
# The dashboard's browser test drives Debian's Chromium through Playwright (no browser download). Install it when
# missing; if that cannot be done here, say so and let the test fail with its own message.
set -uo pipefail

command -v chromium >/dev/null && exit 0
as_root=()
[ "$(id -u)" -eq 0 ] || as_root=(sudo -n)
export DEBIAN_FRONTEND=noninteractive
if "${as_root[@]}" apt-get install -y -q chromium >/dev/null 2>&1 \
  || { "${as_root[@]}" apt-get update -q >/dev/null 2>&1 && "${as_root[@]}" apt-get install -y -q chromium >/dev/null 2>&1; }; then
  echo "installed Debian's chromium for the browser test"
else
  echo "could not install Debian's chromium (apt-get install chromium); the browser test will fail" >&2
fi
