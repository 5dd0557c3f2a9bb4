"""Directories built once on disk, safe against crashes and against other processes building them too."""

import fcntl
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def build_once(destination: Path, build: Callable[[Path], None]) -> bool:
    """Make `destination` with `build(tmp_dir)` unless it exists; True when this call built it.

    `build` writes into a temporary sibling that is renamed into place, so a crash leaves no half-written
    `destination`; an exclusive `flock` on a sibling lock file makes concurrent builders (API and worker,
    or two threads) wait for the first one instead of building twice.
    """
    if destination.is_dir():
        return False
    destination.parent.mkdir(parents=True, exist_ok=True)
    lock_path = destination.with_name(destination.name + ".lock")
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if destination.is_dir():
            return False
        for stale in destination.parent.glob(f".{destination.name}.*"):  # left by a builder that was killed
            shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent))
        try:
            build(staging)
            staging.rename(destination)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return True
