"""The dataset formats: recognising a line's format by its keys and parsing it into an `Example`."""

import json
from typing import Any

from app.ml.datasets.messages import InvalidExample, check_message, is_plain_message, json_type
from app.ml.datasets.results import Example

CHAT = "chat"
PROMPT_COMPLETION = "prompt_completion"
PREFERENCE = "preference"
PROMPTS = "prompts"  # prompts alone, for a teacher to answer (distillation)

_CHAT_KEYS = ("messages", "tools", "parallel_tool_calls")
_PROMPT_COMPLETION_KEYS = ("prompt", "completion")
_OPENAI_PREFERENCE_KEYS = ("input", "preferred_output", "non_preferred_output")
_PAIR_PREFERENCE_KEYS = ("prompt", "chosen", "rejected")
FORMAT_HINT = (
    'a chat example {"messages": [...]}, a prompt/completion pair {"prompt": "...", "completion": "..."} '
    'or a preference pair {"input": ..., "preferred_output": ..., "non_preferred_output": ...} '
    'or {"prompt": ..., "chosen": ..., "rejected": ...}, or a prompt alone for distillation {"prompt": "..."}'
)


def detect_format(example: dict[str, Any]) -> str | None:
    """The format a line's keys announce, or None when they match none."""
    if "messages" in example:
        messages = example["messages"]
        if isinstance(messages, list) and messages and not any(_is_assistant(m) for m in messages):
            return PROMPTS if _is_from(messages[-1], "user") else CHAT
        return CHAT
    if any(key in example for key in ("input", "preferred_output", "non_preferred_output", "chosen", "rejected")):
        return PREFERENCE
    if "prompt" in example and "completion" not in example and len(example) == 1:
        return PROMPTS
    if "prompt" in example or "completion" in example:
        return PROMPT_COMPLETION
    return None


def _is_from(message: Any, role: str) -> bool:
    return isinstance(message, dict) and message.get("role") == role


def _is_assistant(message: Any) -> bool:
    return _is_from(message, "assistant")


def parse_example(example: dict[str, Any], format: str, line: int) -> Example:
    """The line as an Example of `format`, or InvalidExample saying what is wrong."""
    if format == CHAT:
        return _parse_chat(example, line)
    if format == PROMPTS:
        return _parse_prompt(example, line)
    if format == PROMPT_COMPLETION:
        _check_keys(example, _PROMPT_COMPLETION_KEYS, line)
        prompt = _text(example["prompt"], "prompt", line)
        return Example(
            line, format, [{"role": "user", "content": prompt}], [_text(example["completion"], "completion", line)]
        )
    if "input" in example or "preferred_output" in example or "non_preferred_output" in example:
        return _parse_openai_preference(example, line)
    return _parse_pair_preference(example, line)


def _check_keys(example: dict[str, Any], allowed: tuple[str, ...], line: int, required: int = 0) -> None:
    """Rejects keys outside `allowed` and missing ones among its first `required` (all when 0)."""
    for key in example:
        if key not in allowed:
            raise InvalidExample(
                "unknown_key", f'Found unknown key "{key}" on line {line}. Allowed keys here: {", ".join(allowed)}.'
            )
    for key in allowed[: required or len(allowed)]:
        if key not in example:
            raise InvalidExample("missing_key", f"Missing required key `{key}` on line {line}.")


def _text(value: Any, key: str, line: int) -> str:
    if not isinstance(value, str):
        raise InvalidExample("wrong_type", f"`{key}` on line {line} must be a string, found {json_type(value)}.")
    if not value or value.isspace():
        raise InvalidExample("empty_content", f"`{key}` on line {line} is empty.")
    return value


def _messages(value: Any, key: str, line: int) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise InvalidExample("wrong_type", f"`{key}` on line {line} must be an array, found {json_type(value)}.")
    if not value:
        raise InvalidExample("empty_messages", f"`{key}` on line {line} must not be empty.")
    return [
        message if is_plain_message(message) else check_message(message, f"message {index} of `{key}`", line)
        for index, message in enumerate(value, 1)
    ]


def _check_tools(example: dict[str, Any], line: int) -> None:
    if "tools" in example and not isinstance(example["tools"], list):
        raise InvalidExample("wrong_type", f"`tools` on line {line} must be an array.")
    if "parallel_tool_calls" in example and not isinstance(example["parallel_tool_calls"], bool):
        raise InvalidExample("wrong_type", f"`parallel_tool_calls` on line {line} must be true or false.")


def _answer(message: dict[str, Any]) -> str:
    """The text an assistant turn is trained to produce; a tool call with no text is its arguments as JSON."""
    content: str = message["content"]
    if content or "tool_calls" not in message:
        return content
    return json.dumps(message["tool_calls"], sort_keys=True, ensure_ascii=False)


def _parse_chat(example: dict[str, Any], line: int) -> Example:
    _check_keys(example, _CHAT_KEYS, line, required=1)
    _check_tools(example, line)
    raw = example["messages"]
    messages = _messages(raw, "messages", line)
    trained = [i for i, message in enumerate(raw) if message["role"] == "assistant" and message.get("weight", 1)]
    if not trained:
        reason = "all assistant messages have weight 0" if any(m["role"] == "assistant" for m in raw) else ""
        raise InvalidExample(
            "no_assistant_message",
            f"Invalid format on line {line}: at least one message with the assistant role (and weight 1) "
            f"must be present in the example{'; ' + reason if reason else ''}.",
        )
    last = trained[-1]
    return Example(line, CHAT, messages[:last], [_answer(messages[last])])


def _parse_prompt(example: dict[str, Any], line: int) -> Example:
    """A prompt to be answered: a string, or chat messages ending with a user turn (and no answer)."""
    if "prompt" in example:
        return Example(line, PROMPTS, [{"role": "user", "content": _text(example["prompt"], "prompt", line)}], [])
    _check_keys(example, _CHAT_KEYS, line, required=1)
    _check_tools(example, line)
    return Example(line, PROMPTS, _messages(example["messages"], "messages", line), [])


def _prompt_messages(messages: list[dict[str, Any]], key: str, line: int) -> list[dict[str, Any]]:
    if messages[-1]["role"] == "assistant":
        raise InvalidExample(
            "last_input_message_from_assistant",
            f"The last message in `{key}` on line {line} must not be from the assistant: "
            "the preferred and non-preferred outputs are the assistant's turn.",
        )
    return messages


def _output(value: Any, key: str, line: int) -> str:
    """The single assistant message of a preference output, given as a one-message array or (pairs) a string."""
    if isinstance(value, str):
        return _text(value, key, line)
    messages = _messages(value, key, line)
    if len(messages) != 1 or messages[0]["role"] != "assistant":
        raise InvalidExample(
            "invalid_preference_output",
            f"`{key}` on line {line} must contain exactly one message, with the assistant role.",
        )
    return _answer(messages[0])


def _parse_openai_preference(example: dict[str, Any], line: int) -> Example:
    _check_keys(example, _OPENAI_PREFERENCE_KEYS, line)
    prompt = example["input"]
    if not isinstance(prompt, dict):
        raise InvalidExample("wrong_type", f"`input` on line {line} must be an object, found {json_type(prompt)}.")
    _check_keys(prompt, _CHAT_KEYS, line, required=1)
    _check_tools(prompt, line)
    messages = _prompt_messages(_messages(prompt["messages"], "input.messages", line), "input.messages", line)
    chosen = _output(example["preferred_output"], "preferred_output", line)
    rejected = _output(example["non_preferred_output"], "non_preferred_output", line)
    return Example(line, PREFERENCE, messages, [chosen], rejected)


def _parse_pair_preference(example: dict[str, Any], line: int) -> Example:
    _check_keys(example, _PAIR_PREFERENCE_KEYS, line)
    prompt = example["prompt"]
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": _text(prompt, "prompt", line)}]
    elif not isinstance(prompt, list):
        raise InvalidExample(
            "wrong_type",
            f"`prompt` on line {line} must be a string or an array of messages, found {json_type(prompt)}.",
        )
    else:
        messages = _prompt_messages(_messages(prompt, "prompt", line), "prompt", line)
    chosen = _output(example["chosen"], "chosen", line)
    return Example(line, PREFERENCE, messages, [chosen], _output(example["rejected"], "rejected", line))
