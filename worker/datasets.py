"""Reading a stored JSONL dataset back as lists of chat messages."""

import json

from app.storage import ObjectStore


def load_examples(store: ObjectStore, storage_key: str) -> list[list[dict]]:
    """The conversations in a file that passed upload validation (blank lines skipped)."""
    text = store.read_bytes(storage_key).decode("utf-8")
    return [json.loads(line)["messages"] for line in text.splitlines() if line.strip()]
