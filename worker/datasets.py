"""Reading a stored JSONL dataset back as conversations to train on."""

import json

from app.storage import ObjectStore


def _plain_content(message: dict) -> dict:
    """Text parts joined into one string, as chat templates expect (`weight` and other keys kept)."""
    content = message.get("content")
    if isinstance(content, str):
        return message
    text = "".join(part["text"] for part in content) if isinstance(content, list) else ""
    return {**message, "content": text}


def as_conversation(example: dict) -> list[dict]:
    """The messages of a chat example (weights kept), or a prompt/completion as one exchange."""
    if "messages" in example:
        return [_plain_content(message) for message in example["messages"]]
    return [{"role": "user", "content": example["prompt"]}, {"role": "assistant", "content": example["completion"]}]


def load_examples(store: ObjectStore, storage_key: str) -> list[list[dict]]:
    """The conversations in a file that passed upload validation (blank lines skipped)."""
    text = store.read_bytes(storage_key).decode("utf-8-sig")
    return [as_conversation(json.loads(line)) for line in text.splitlines() if line.strip()]
