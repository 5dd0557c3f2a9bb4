"""Raw-byte handling of JSONL: cutting network chunks into lines and measuring nesting before parsing."""

import re
from collections.abc import Iterator
from itertools import accumulate

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = bytes(sorted(set(range(256)) - set(b"[]{}")))
_DEPTH_STEP = [0] * 256
for _opener, _closer in (b"[]", b"{}"):
    _DEPTH_STEP[_opener], _DEPTH_STEP[_closer] = 1, -1


class LineSplitter:
    """Cuts byte chunks of any size into lines, holding at most one partial line of `max_line_bytes`.

    Lines are yielded without their `\\n`. A line longer than `max_line_bytes` is not buffered whole: only its
    first `max_line_bytes + 1` bytes are kept and yielded, the rest is discarded as it arrives, so the
    consumer sees a line over the limit and can report it. Memory stays flat whatever the file holds.
    """

    def __init__(self, max_line_bytes: int) -> None:
        self._max_line_bytes = max_line_bytes
        self._partial = bytearray()

    def push(self, chunk: bytes) -> Iterator[bytes]:
        pieces = chunk.split(b"\n")
        tail = pieces.pop()  # the bytes after the last newline: the start of the next line
        for piece in pieces:
            yield self._complete(piece)
        self._hold(tail)

    def close(self) -> Iterator[bytes]:
        """The last line when the data did not end with a newline."""
        if self._partial:
            yield self._complete(b"")

    def _hold(self, piece: bytes) -> None:
        room = self._max_line_bytes + 1 - len(self._partial)
        if room > 0:
            self._partial += piece[:room]

    def _complete(self, piece: bytes) -> bytes:
        if not self._partial:
            return piece[: self._max_line_bytes + 1]
        self._hold(piece)
        line = bytes(self._partial)
        self._partial.clear()
        return line


def nests_deeper_than(line: bytes, max_depth: int) -> bool:
    """Whether the JSON text in `line` nests arrays/objects deeper than `max_depth`, found without parsing.

    Counting brackets (outside strings) first means a hostile line cannot exhaust the parser's recursion.
    """
    if line.count(b"[") + line.count(b"{") <= max_depth:  # the common case, at memchr speed
        return False
    brackets = _STRING.sub(b"", line).translate(None, _NOT_BRACKET)
    return max(accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0) > max_depth
