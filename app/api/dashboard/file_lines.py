"""The text of a few lines of a stored file, so a data report shows the lines it names, not only their numbers."""

from collections.abc import Collection

from app.core.storage import ObjectStore

SHOWN_CHARACTERS = 600  # enough to recognise an example; the file itself is one download away


def lines_of(store: ObjectStore, storage_key: str, numbers: Collection[int]) -> dict[int, str]:
    """Line number (1-based, as the report counts) → its text, shortened; reads the file only as far as needed."""
    wanted, found = set(numbers), {}
    number, tail = 0, b""
    for chunk in store.open(storage_key):
        *whole, tail = (tail + chunk).split(b"\n")
        for line in whole:
            number += 1
            if number in wanted:
                found[number] = _shown(line)
        if len(found) == len(wanted):
            return found
    if tail and number + 1 in wanted:
        found[number + 1] = _shown(tail)
    return found


def _shown(line: bytes) -> str:
    text = line.decode("utf-8", errors="replace")
    return text if len(text) <= SHOWN_CHARACTERS else text[:SHOWN_CHARACTERS] + "…"
