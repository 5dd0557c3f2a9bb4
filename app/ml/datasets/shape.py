"""The structure of an answer, to find the answers that break the shape most answers share."""

import json
import re
from typing import Any

_KEY_LINE = re.compile(r"\s*([A-Za-z][\w \-]{0,40}?)\s*:(?:\s|$)")


def shape_of(answer: str) -> str | None:
    """`json:` and the sorted keys of a JSON object, `lines:` and the ordered keys of `key: value` lines, else None."""
    text = answer.strip()
    if ":" not in text:
        return None
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):
            return None
        return "json:" + ",".join(sorted(value)) if isinstance(value, dict) else None
    keys = []
    for row in text.splitlines():
        if row and not row.isspace():
            match = _KEY_LINE.match(row)
            if match is None:
                return None
            keys.append(match.group(1).strip().casefold())
    return "lines:" + ",".join(keys)


def describe_shape(shape: str) -> dict[str, Any]:
    kind, _, keys = shape.partition(":")
    return {"kind": "json_object" if kind == "json" else "key_value_lines", "keys": keys.split(",") if keys else []}
