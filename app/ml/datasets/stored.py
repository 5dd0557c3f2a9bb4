"""A stored dataset read back from object storage, chunk by chunk, so that memory does not grow with its size."""

from collections.abc import Iterator

from app.core.storage import ObjectStore
from app.ml.datasets.report import DatasetProfiler
from app.ml.datasets.results import Example
from app.ml.datasets.validation import DatasetValidator


def iter_examples(store: ObjectStore, storage_key: str) -> Iterator[Example]:
    """The valid examples of a stored file, in order."""
    pending: list[Example] = []
    validator = DatasetValidator(on_example=pending.append)
    for chunk in store.open(storage_key):
        validator.feed_chunk(chunk)
        yield from pending
        pending.clear()
    validator.finish()
    yield from pending


def profile(store: ObjectStore, storage_key: str) -> DatasetProfiler:
    """The structural profile (duplicates, conflicts, answer shape) of a stored file."""
    profiler = DatasetProfiler()
    for example in iter_examples(store, storage_key):
        profiler.add(example)
    return profiler
