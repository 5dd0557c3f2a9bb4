"""Reading a stored JSONL dataset back as conversations (or preference pairs) to train on."""

import json

from app.core.storage import ObjectStore
from app.ml.datasets.formats import FORMAT_HINT, PREFERENCE, detect_format, parse_example
from app.ml.datasets.messages import InvalidExample

PreferenceExample = tuple[list[dict], str, str]  # prompt messages, chosen answer, rejected answer


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


def load_pairs(store: ObjectStore, storage_key: str) -> list[PreferenceExample]:
    """The preference pairs in a file that passed upload validation, in either preference format."""
    text = store.read_bytes(storage_key).decode("utf-8-sig")
    pairs = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            example = parse_example(json.loads(line), PREFERENCE, number)
            assert example.rejected is not None  # every preference format has a rejected answer
            pairs.append(([_plain_content(m) for m in example.input_messages], example.targets[0], example.rejected))
    return pairs


def load_prompts(store: ObjectStore, storage_key: str) -> list[list[dict]]:
    """The prompt of each example of a file that passed upload validation (prompts, or the conversation before
    the answer of chat and prompt/completion examples), in file order."""
    text = store.read_bytes(storage_key).decode("utf-8-sig")
    rows = [(number, json.loads(line)) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not rows:
        return []
    first_line, first_example = rows[0]
    file_format = detect_format(first_example)
    if file_format is None:
        raise InvalidExample("unknown_format", f"Line {first_line} matches no dataset format; expected {FORMAT_HINT}.")
    return [[_plain_content(m) for m in parse_example(row, file_format, number).input_messages] for number, row in rows]
