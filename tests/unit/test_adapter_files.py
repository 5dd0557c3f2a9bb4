"""The local adapter file cache: fetched once, and past its byte budget the least recently used adapters that are
not in memory are deleted."""

from pathlib import Path

from app.serving.adapter_files import AdapterFiles, adapter_directory_name

SIZE = 1000  # bytes of each fake adapter


class Store:
    def __init__(self) -> None:
        self.fetches: list[str] = []

    def __call__(self, adapter_name: str, destination: Path) -> None:
        self.fetches.append(adapter_name)
        (destination / "adapter_model.safetensors").write_bytes(b"x" * SIZE)


def cached(root: Path) -> set[str]:
    return {entry.name for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith(".")}


def names(*adapters: str) -> set[str]:
    return {adapter_directory_name(adapter) for adapter in adapters}


def test_past_the_budget_the_least_recently_used_adapter_files_are_deleted(tmp_path):
    store = Store()
    files = AdapterFiles(tmp_path, store, max_bytes=2 * SIZE + SIZE // 2)
    files.path("a")
    files.path("b")
    files.path("a")  # used again: "b" is now the least recently used

    files.path("c")

    assert cached(tmp_path) == names("a", "c")
    files.path("b")  # fetched again
    assert store.fetches == ["a", "b", "c", "b"]


def test_files_of_an_adapter_in_memory_are_kept_whatever_their_age(tmp_path):
    files = AdapterFiles(tmp_path, Store(), max_bytes=2 * SIZE + SIZE // 2, in_use=lambda: {"a"})
    for adapter in ["a", "b", "c", "d"]:
        files.path(adapter)

    assert cached(tmp_path) == names("a", "d")
