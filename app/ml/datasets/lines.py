"""Raw-byte handling of JSONL: cutting network chunks into lines."""

from collections.abc import Iterator


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
