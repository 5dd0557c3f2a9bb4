"""A checksum manifest written beside every saved adapter and checked wherever one is downloaded, so a file
cut short or damaged on its way through S3 is refused with a clear error instead of served or trained on."""

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from app.core.errors import AdapterCorrupted
from app.core.storage import UnsafeObjectKey

MANIFEST = "loraport-manifest.json"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(directory: Path) -> Path:
    """Records the sha256 of every file in `directory` (an adapter just saved) in its manifest."""
    checksums = {path.relative_to(directory).as_posix(): _sha256(path) for path in _files(directory)}
    manifest = directory / MANIFEST
    manifest.write_text(json.dumps({"sha256": checksums}, indent=1, sort_keys=True))
    return manifest


def verify_manifest(directory: Path, name: str) -> None:
    """Raises `AdapterCorrupted` unless `directory` holds exactly the files its manifest lists, each with its
    checksum. An adapter without a manifest, or with a file the manifest does not list, is refused too: every
    adapter Loraport saves has one (`worker.training.save_adapter`), so anything else was put there by someone else
    (#17: whoever can write the bucket must not be able to slip a file into an adapter)."""
    manifest = directory / MANIFEST
    if not manifest.is_file():
        raise AdapterCorrupted(
            f"The adapter of '{name}' has no checksum manifest ({MANIFEST}), so it cannot be checked; "
            "it was not saved by this version of Loraport: train it again"
        )
    expected = json.loads(manifest.read_text())["sha256"]
    unlisted = sorted({path.relative_to(directory).as_posix() for path in _files(directory)} - set(expected))
    if unlisted:
        raise AdapterCorrupted(
            f"The adapter of '{name}' holds files its manifest does not list ({', '.join(unlisted[:5])}); "
            "it cannot be used as it is stored"
        )
    for relative, checksum in expected.items():
        path = directory / relative
        if not path.is_file() or _sha256(path) != checksum:
            raise AdapterCorrupted(
                f"The adapter of '{name}' failed its checksum ({relative}); it cannot be used as it is stored"
            )


def verified_fetch(download: Callable[[str, Path], None]) -> Callable[[str, Path], None]:
    """`download(prefix, directory)` followed by the manifest check; an object whose name would land outside
    `directory` (`ObjectStore.download_prefix` refuses it) is a corrupted adapter too."""

    def fetch(prefix: str, directory: Path) -> None:
        try:
            download(prefix, directory)
        except UnsafeObjectKey as error:
            raise AdapterCorrupted(f"The adapter stored under '{prefix}' is unusable: {error}") from None
        verify_manifest(directory, prefix)

    return fetch
