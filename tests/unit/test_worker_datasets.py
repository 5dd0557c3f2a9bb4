"""Every supervised format reaches the trainer as a conversation the chat template can render."""

import json

from app.ml.scoring.report import held_out_examples
from worker.datasets import as_conversation, load_examples, numbered_lines, stream_examples


def test_prompt_completion_becomes_one_exchange() -> None:
    assert as_conversation({"prompt": "2+2?", "completion": "4"}) == [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
    ]


def test_chat_keeps_weights_and_joins_text_parts() -> None:
    example = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]},
            {"role": "assistant", "content": "Hello", "weight": 0},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]},
        ]
    }
    assert as_conversation(example) == [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello", "weight": 0},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "1"}]},
    ]


class _ChunkedStore:
    """An object served in small chunks, counting the bytes read: what streaming costs."""

    def __init__(self, content: bytes, chunk: int = 64) -> None:
        self.content, self.chunk, self.read = content, chunk, 0

    def open(self, key: str):
        for start in range(0, len(self.content), self.chunk):
            self.read += min(self.chunk, len(self.content) - start)
            yield self.content[start : start + self.chunk]


def _lines(count: int) -> list[bytes]:
    return [
        json.dumps(
            {"messages": [{"role": "user", "content": f"q{i} é"}, {"role": "assistant", "content": "a"}]}
        ).encode()
        for i in range(count)
    ]


def test_examples_stream_across_chunk_boundaries_with_a_bom_and_blank_lines() -> None:
    content = "\ufeff".encode() + b"\n".join([*_lines(3), b"", b"  ", *_lines(2)])  # no final newline
    store = _ChunkedStore(content, chunk=7)  # chunks split lines and the two bytes of "é"

    examples = load_examples(store, "k")  # type: ignore[arg-type]

    assert [example[0]["content"] for example in examples] == ["q0 é", "q1 é", "q2 é", "q0 é", "q1 é"]
    assert [number for number, _ in numbered_lines(_ChunkedStore(content, 7), "k")] == [1, 2, 3, 6, 7]  # type: ignore[arg-type]


def test_an_evaluation_reads_only_the_examples_it_uses() -> None:
    content = b"\n".join(_lines(1000)) + b"\n" + b"{not json" * 10_000  # a malformed tail it never reaches
    store = _ChunkedStore(content, chunk=1024)

    examples = held_out_examples(stream_examples(store, "k"), max_examples=10)  # type: ignore[arg-type]

    assert len(examples) == 10
    assert store.read < len(content) / 50  # the first few chunks, not the file
