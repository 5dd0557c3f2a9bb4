"""A crafted object name cannot make a download write outside its directory (audit #17): whoever can write the
bucket would otherwise write files anywhere as the API or worker user.

SeaweedFS itself refuses names holding `..` (checked: PutObject answers InvalidRequest), but AWS S3 and others keep
them as sent, so the listing here is the real store's plus one such name."""

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.core.settings import Settings
from app.core.storage import ObjectStore, UnsafeObjectKey


@pytest.mark.parametrize("crafted", ["../../../../escaped.txt", "sub/../../../escaped.txt"])
def test_a_key_climbing_out_of_the_prefix_is_refused_and_nothing_is_written_outside(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crafted: str
) -> None:
    store = ObjectStore(settings)
    prefix = f"orgs/o-{uuid.uuid4().hex[:8]}/adapters/ftjob-x"
    store.put_bytes(f"{prefix}/adapter_config.json", b"{}")
    store.put_bytes(f"{prefix}/escaped.txt", b"written outside")  # what the crafted name would fetch
    real_listing = store.list_keys

    def listing(folder: str) -> Iterator[str]:
        yield from real_listing(folder)
        yield f"{folder}{crafted}"

    monkeypatch.setattr(store, "list_keys", listing)
    monkeypatch.setattr(store.client, "download_file", _download_via(store))
    dest = tmp_path / "a" / "b" / "c" / "dest"

    with pytest.raises(UnsafeObjectKey, match="outside"):
        store.download_prefix(prefix, dest)

    assert sorted(path.name for path in tmp_path.rglob("escaped.txt")) == ["escaped.txt"]  # only inside dest
    assert (dest / "escaped.txt").is_file()
    monkeypatch.undo()
    store.delete_prefix(prefix)


def _download_via(store: ObjectStore):  # type: ignore[no-untyped-def]
    """Serves a crafted name with the object it resolves to, as a store that keeps `..` in names would."""
    real = store.client.download_file

    def download(bucket: str, key: str, filename: str) -> None:
        real(bucket, key.replace("../", "").replace("sub/", ""), filename)

    return download
