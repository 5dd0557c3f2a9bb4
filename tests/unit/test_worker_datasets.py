"""Every supervised format reaches the trainer as a conversation the chat template can render."""

from worker.datasets import as_conversation


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
