"""Rewrite a wheel without the files whose names match a pattern, and without their lines in its RECORD.

    python scripts/slim_wheel.py WHEEL PATTERN [KEEP ...]

bitsandbytes ships its CUDA library for every CUDA version (41 MiB); scripts/gpu-wheels.sh keeps those of the CUDA
versions torch is built for, so that it fits in what travels with the checkout.
"""

import fnmatch
import os
import sys
import zipfile


def slim(wheel: str, pattern: str, keep: list[str]) -> list[str]:
    """Drop the members matching `pattern` but not any of `keep`; returns the names dropped."""
    with zipfile.ZipFile(wheel) as source:
        members = source.infolist()
        dropped = [
            m.filename
            for m in members
            if fnmatch.fnmatch(m.filename, pattern) and not any(fnmatch.fnmatch(m.filename, k) for k in keep)
        ]
        slimmed = wheel + ".slim"
        with zipfile.ZipFile(slimmed, "w", zipfile.ZIP_DEFLATED) as target:
            for member in members:
                if member.filename in dropped:
                    continue
                data = source.read(member)
                if member.filename.endswith(".dist-info/RECORD"):
                    lines = data.decode().splitlines()
                    data = "".join(f"{line}\n" for line in lines if line.split(",")[0] not in dropped).encode()
                target.writestr(member, data)
    os.replace(slimmed, wheel)
    return dropped


if __name__ == "__main__":
    for name in slim(sys.argv[1], sys.argv[2], sys.argv[3:]):
        print(f"  left out {name}")
