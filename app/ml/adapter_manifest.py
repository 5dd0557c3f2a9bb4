"""A checksum manifest written beside every saved adapter and checked wherever one is downloaded, so a file
cut short or damaged on its way through S3 is refused with a clear error instead of served or trained on."""

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from app.core.errors import AdapterCorrupted

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
    """Raises `AdapterCorrupted` unless every file the manifest lists is in `directory` with its checksum.
    Adapters saved before manifests existed have none and are accepted as they are."""
    manifest = directory / MANIFEST
    if not manifest.exists():
        return
    expected = json.loads(manifest.read_text())["sha256"]
    for relative, checksum in expected.items():
        path = directory / relative
        if not path.is_file() or _sha256(path) != checksum:
            raise AdapterCorrupted(
                f"The adapter of '{name}' failed its checksum ({relative}); it cannot be used as it is stored"
            )


def verified_fetch(download: Callable[[str, Path], None]) -> Callable[[str, Path], None]:
    """`download(prefix, directory)` followed by the manifest check."""

    def fetch(prefix: str, directory: Path) -> None:
        download(prefix, directory)
        verify_manifest(directory, prefix)

    return fetch
