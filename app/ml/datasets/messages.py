"""Checks of one chat message, shared by the chat and preference formats."""

import json
from typing import Any

ROLES = ("system", "user", "assistant", "tool")
_COMMON_KEYS = {"role", "content", "name"}
_KEYS_BY_ROLE = {
    "system": _COMMON_KEYS,
    "user": _COMMON_KEYS,
    "assistant": _COMMON_KEYS | {"weight", "tool_calls"},
    "tool": _COMMON_KEYS | {"tool_call_id"},
}
_PLAIN_KEYS = {"role", "content"}
_PLAIN_ROLES = frozenset(("system", "user", "assistant"))


class InvalidExample(Exception):
    """Why one line is not a valid example; `message` names the line."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def json_type(value: Any) -> str:
    """The JSON name of a decoded value's type, for messages users recognise."""
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def is_plain_message(message: Any) -> bool:
    """Whether this is the common `{"role", "content": non-empty str}` message that needs no further check.

    Checked first because it is nearly every message: it keeps validation well above network speed.
    """
    if type(message) is not dict or len(message) != 2:
        return False
    role, content = message.get("role"), message.get("content")
    plain_role = type(role) is str and role in _PLAIN_ROLES
    return plain_role and type(content) is str and bool(content) and not content.isspace()


def check_message(message: Any, where: str, line: int) -> dict[str, Any]:
    """The message as `{"role", "content": str}` (+ `tool_calls`), or InvalidExample saying what is wrong."""
    if not isinstance(message, dict):
        raise InvalidExample(
            "wrong_type", f"Expected an object for {where} on line {line}, found {json_type(message)}."
        )
    role = message.get("role")
    if role is None:
        raise InvalidExample("missing_key", f"Missing required key `role` in {where} on line {line}.")
    if not isinstance(role, str) or role not in _KEYS_BY_ROLE:
        raise InvalidExample(
            "unknown_role",
            f"Invalid role {json.dumps(role)} in {where} on line {line}. Possible roles: {', '.join(ROLES)}.",
        )
    if "weight" in message:
        _check_weight(message, where, line)
    if not message.keys() <= _KEYS_BY_ROLE[role]:
        unknown = sorted(message.keys() - _KEYS_BY_ROLE[role])[0]
        allowed = ", ".join(sorted(_KEYS_BY_ROLE[role]))
        raise InvalidExample(
            "unknown_key",
            f"Found unknown key {json.dumps(unknown)} in {where} on line {line}. A {role} message allows: {allowed}.",
        )
    for key in ("name", "tool_call_id"):
        if key in message and not isinstance(message[key], str):
            raise InvalidExample("wrong_type", f"`{key}` in {where} on line {line} must be a string.")
    tool_calls = message.get("tool_calls")
    if tool_calls is not None and not (isinstance(tool_calls, list) and tool_calls):
        raise InvalidExample("wrong_type", f"`tool_calls` in {where} on line {line} must be a non-empty array.")
    content = _content_text(message, where, line, may_be_null=tool_calls is not None)
    if message.keys() == _PLAIN_KEYS and content is message["content"]:
        return message  # the common case needs no copy
    normalised: dict[str, Any] = {"role": role, "content": content}
    if tool_calls is not None:
        normalised["tool_calls"] = tool_calls
    return normalised


def _check_weight(message: dict[str, Any], where: str, line: int) -> None:
    weight = message["weight"]
    if message["role"] != "assistant":
        raise InvalidExample(
            "invalid_weight",
            f"`weight` is only allowed on assistant messages; {where} on line {line} is a {message['role']} message.",
        )
    if weight not in (0, 1) or isinstance(weight, (bool, float)):
        raise InvalidExample(
            "invalid_weight", f"Weight must be either 0 or 1 in {where} on line {line}, found {json.dumps(weight)}."
        )


def _content_text(message: dict[str, Any], where: str, line: int, may_be_null: bool) -> str:
    if "content" not in message and not may_be_null:
        raise InvalidExample("missing_key", f"Missing required key `content` in {where} on line {line}.")
    content = message.get("content")
    if content is None and may_be_null:
        return ""
    if isinstance(content, list):
        content = "".join(_text_part(part, where, line) for part in content)
    elif not isinstance(content, str):
        raise InvalidExample(
            "wrong_type",
            f"`content` in {where} on line {line} must be a string or an array of text parts, "
            f"found {json_type(content)}.",
        )
    if not content or content.isspace():
        raise InvalidExample("empty_content", f"Empty `content` in {where} on line {line}.")
    return content


def _text_part(part: Any, where: str, line: int) -> str:
    if isinstance(part, dict) and part.get("type") == "text":
        text = part.get("text")
        if isinstance(text, str):
            return text
    raise InvalidExample(
        "wrong_type",
        f'Each content part in {where} on line {line} must be {{"type": "text", "text": "..."}}; '
        "only text is supported.",
    )
