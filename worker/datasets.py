"""Reading a stored JSONL dataset back as conversations (or preference pairs) to train on.

Files are streamed line by line: reading, decoding and parsing a whole object at once costs about ten times its size
in memory, and an evaluation reads only as many examples as it uses.
"""

import codecs
import json
from collections.abc import Iterator

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


def numbered_lines(store: ObjectStore, storage_key: str) -> Iterator[tuple[int, str]]:
    """(1-based number, text) of each non-blank line of a stored UTF-8 file (BOM skipped), read a chunk at a time."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    number, partial = 0, ""
    for chunk in store.open(storage_key):
        lines = (partial + decoder.decode(chunk)).split("\n")
        partial = lines.pop()
        for line in lines:
            number += 1
            if line.strip():
                yield number, line
    partial += decoder.decode(b"", final=True)
    if partial.strip():
        yield number + 1, partial


def stream_examples(store: ObjectStore, storage_key: str) -> Iterator[list[dict]]:
    """The conversations in a file that passed upload validation, one at a time: a reader that stops early reads
    no further."""
    for _, line in numbered_lines(store, storage_key):
        yield as_conversation(json.loads(line))


def load_examples(store: ObjectStore, storage_key: str) -> list[list[dict]]:
    """The conversations in a file that passed upload validation (blank lines skipped)."""
    return list(stream_examples(store, storage_key))


def load_pairs(store: ObjectStore, storage_key: str) -> list[PreferenceExample]:
    """The preference pairs in a file that passed upload validation, in either preference format."""
    pairs = []
    for number, line in numbered_lines(store, storage_key):
        example = parse_example(json.loads(line), PREFERENCE, number)
        assert example.rejected is not None  # every preference format has a rejected answer
        pairs.append(([_plain_content(m) for m in example.input_messages], example.targets[0], example.rejected))
    return pairs


def load_prompts(store: ObjectStore, storage_key: str) -> list[list[dict]]:
    """The prompt of each example of a file that passed upload validation (prompts, or the conversation before
    the answer of chat and prompt/completion examples), in file order."""
    prompts: list[list[dict]] = []
    file_format = None
    for number, line in numbered_lines(store, storage_key):
        row = json.loads(line)
        if file_format is None:
            file_format = detect_format(row)
            if file_format is None:
                message = f"Line {number} matches no dataset format; expected {FORMAT_HINT}."
                raise InvalidExample("unknown_format", message)
        prompts.append([_plain_content(m) for m in parse_example(row, file_format, number).input_messages])
    return prompts
