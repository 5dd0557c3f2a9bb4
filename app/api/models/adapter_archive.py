"""A model's adapter as a tar streamed straight from object storage: peft's files (`adapter_config.json`,
`adapter_model.safetensors`) and the checksum manifest, the headers built from the objects' sizes so that the length
is known before the first byte and nothing is held in memory or on disk.

Each file is checked against the manifest as it streams: one whose bytes do not match it cuts the download short
(the client sees fewer bytes than `Content-Length` announced) instead of handing over a damaged adapter whole.
"""

import hashlib
import json
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass

from app.core.errors import AdapterCorrupted, InvalidRequest
from app.core.storage import ObjectStore
from app.ml.adapter_manifest import MANIFEST
from app.ml.models import ModelRef

_BLOCK = 512  # tar's unit: each header, each file padded to it, and two empty blocks at the end


@dataclass(frozen=True)
class _Member:
    name: str  # inside the tar
    key: str
    size: int
    sha256: str | None  # None: the manifest itself


@dataclass(frozen=True)
class Archive:
    filename: str
    size: int
    chunks: Iterator[bytes]


def archive_name(model_id: str, kind: str) -> str:
    """A file name for a model's download: ids hold ':' (and base ids '/'), which file systems dislike."""
    return f"{re.sub(r'[^A-Za-z0-9._-]+', '-', model_id).strip('-')}-{kind}.tar"


def adapter_archive(store: ObjectStore, model: ModelRef) -> Archive:
    """The adapter of a fine-tuned model or checkpoint as a tar, checked against its manifest while it streams."""
    if model.adapter_prefix is None:
        raise InvalidRequest(
            f"'{model.id}' is a base model: it has no adapter to download; download one of its fine-tuned models",
            param="model",
            code="model_has_no_adapter",
        )
    members = _members(store, model)
    size = sum(_BLOCK + _padded(member.size) for member in members) + 2 * _BLOCK
    return Archive(archive_name(model.id, "adapter"), size, _stream(store, model.id, members))


def _members(store: ObjectStore, model: ModelRef) -> list[_Member]:
    """The adapter's files as its manifest lists them, refused as the engine would refuse them: without a manifest,
    or with a file the manifest does not list (#17) or lacks."""
    folder = f"{(model.adapter_prefix or '').rstrip('/')}/"
    keys = sorted(store.list_keys(folder))
    names = {key.removeprefix(folder): key for key in keys}
    if MANIFEST not in names:
        raise AdapterCorrupted(f"The adapter of '{model.id}' has no checksum manifest; it cannot be downloaded")
    expected: dict[str, str] = json.loads(store.read_bytes(names[MANIFEST]))["sha256"]
    if set(names) != {*expected, MANIFEST}:
        raise AdapterCorrupted(f"The adapter of '{model.id}' does not hold the files its manifest lists")
    return [
        _Member(name, key, _size(store, key), expected.get(name))
        for name, key in sorted(names.items(), key=lambda item: item[0] == MANIFEST)  # the manifest last
    ]


def _size(store: ObjectStore, key: str) -> int:
    return store.client.head_object(Bucket=store.bucket, Key=key)["ContentLength"]


def _padded(size: int) -> int:
    return size + (-size % _BLOCK)


def _header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mode = size, 0o644
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def _stream(store: ObjectStore, model_id: str, members: list[_Member]) -> Iterator[bytes]:
    for member in members:
        yield _header(member.name, member.size)
        digest, sent = hashlib.sha256(), 0
        for chunk in store.open(member.key):
            digest.update(chunk)
            sent += len(chunk)
            yield chunk
        if sent != member.size or (member.sha256 is not None and digest.hexdigest() != member.sha256):
            raise AdapterCorrupted(f"The adapter of '{model_id}' failed its checksum ({member.name})")
        yield b"\0" * (-member.size % _BLOCK)
    yield b"\0" * (2 * _BLOCK)
