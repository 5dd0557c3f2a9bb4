"""How deep JSON text nests, measured on its bytes before any parser recurses into it: request bodies and dataset
lines are checked with it, so that a hostile one cannot exhaust the parser's recursion."""

from itertools import accumulate

_NOT_OPENER = bytes(sorted(set(range(256)) - set(b"[{")))
_NOT_STRUCTURE = bytes(sorted(set(range(256)) - set(b'"[]{}')))
_NOT_BRACKET = bytes(sorted(set(range(256)) - set(b"[]{}")))
_DEPTH_STEP = [0] * 256
for _opener, _closer in (b"[]", b"{}"):
    _DEPTH_STEP[_opener], _DEPTH_STEP[_closer] = 1, -1


def nests_deeper_than(text: bytes, max_depth: int) -> bool:
    """Whether the UTF-8 JSON `text` nests arrays/objects deeper than `max_depth`, found without parsing.

    Counting brackets (outside strings) first means a hostile line or body cannot exhaust the parser's
    recursion. Each step is one pass in C, and only the brackets of a text with more than `max_depth` openers
    outside its strings are walked in Python: an 8 MiB body costs about what `json.loads` of it does.
    """
    if _openers(text) <= max_depth:  # the common case
        return False
    if b"\\" in text:  # drop escaped backslashes, then escaped quotes: every quote left opens or closes a string
        text = text.replace(b"\\\\", b"").replace(b'\\"', b"")
    outside_strings = text.translate(None, _NOT_STRUCTURE).split(b'"')[::2]
    brackets = b"".join(outside_strings).translate(None, _NOT_BRACKET)
    if _openers(brackets) <= max_depth:  # many brackets, but inside strings (code, say)
        return False
    return max(accumulate(map(_DEPTH_STEP.__getitem__, brackets))) > max_depth


def _openers(text: bytes) -> int:
    return len(text.translate(None, _NOT_OPENER))
