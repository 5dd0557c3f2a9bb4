"""Generated token ids → text deltas, as a stream: stop sequences cut the text, and nothing that might still
turn out to be the start of a stop sequence (or half of a multi-byte character) is sent early."""

from typing import Literal

from transformers import PreTrainedTokenizerBase

FinishReason = Literal["stop", "length"]
_INCOMPLETE_CHARACTER = "\ufffd"  # what decoding gives for the first bytes of a character split over tokens


class Detokenizer:
    """`feed` one generated token at a time; it returns the text that is final. `finish_reason` is set once the
    completion ended on an end-of-turn token or a stop sequence; `close` flushes the rest at `max_tokens`."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, end_of_turn_ids: set[int], stop: list[str]) -> None:
        self._tokenizer, self._end_ids, self._stop = tokenizer, end_of_turn_ids, [s for s in stop if s]
        self._ids: list[int] = []
        # Incremental decoding (as TGI does): `_decoded` is the text of `_ids[:_read]`; each step decodes only the
        # tokens from `_prefix` on (the previous step's new tokens as context), not the whole completion again.
        self._decoded, self._prefix, self._read = "", 0, 0
        self._sent = 0  # characters of the decoded text already returned
        self.completion_tokens = 0
        self.finish_reason: FinishReason | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def feed(self, token_id: int) -> str:
        if self.finished:
            return ""
        self.completion_tokens += 1
        if token_id in self._end_ids:
            self.finish_reason = "stop"
            return self._release(self._text(final=True), final=True)
        self._ids.append(token_id)
        text = self._text(final=False)
        # A stop cannot begin in the text already sent: `_safe_end` holds back every tail that could begin one.
        found = (text.find(stop, self._sent) for stop in self._stop)
        cut = min((index for index in found if index >= 0), default=None)
        if cut is not None:
            self.finish_reason = "stop"
            return self._release(text[:cut], final=True)
        return self._release(text, final=False)

    def close(self) -> str:
        """The remaining text when generation ended without a stop (the token limit)."""
        if self.finished:
            return ""
        self.finish_reason = "length"
        return self._release(self._text(final=True), final=True)

    def _text(self, final: bool) -> str:
        """The text so far; tokens that end inside a multi-byte character wait for the rest of it unless `final`."""
        settled = self._decode(self._ids[self._prefix : self._read])
        window = self._decode(self._ids[self._prefix :])
        new = window[len(settled) :]
        if final or (new and not new.endswith(_INCOMPLETE_CHARACTER)):
            self._decoded += new
            self._prefix, self._read = self._read, len(self._ids)
        return self._decoded

    def _decode(self, ids: list[int]) -> str:
        # One sequence of ids decodes to a str (the library's return type covers batches of sequences too).
        return self._tokenizer.decode(ids, skip_special_tokens=True)  # type: ignore[return-value]

    def _release(self, text: str, final: bool) -> str:
        end = len(text) if final else self._safe_end(text)
        delta = text[self._sent : end] if end > self._sent else ""
        self._sent = max(self._sent, end)
        return delta

    def _safe_end(self, text: str) -> int:
        """How much of `text` can be sent: not a tail that a stop sequence may begin with. Only the last
        characters, fewer than the longest stop's, can be such a tail: the work per token does not grow with the
        text, and is about the stops' total length."""
        longest = max((len(stop) for stop in self._stop), default=1)
        window = text[len(text) - min(len(text), longest - 1) :]
        return len(text) - max((_held(window, stop) for stop in self._stop), default=0)


def _held(window: str, stop: str) -> int:
    """The length of the longest tail of `window` that `stop` begins with, shorter than `stop`."""
    tail = window[len(window) - min(len(window), len(stop) - 1) :]
    first = stop[0]
    start = tail.find(first)
    while start >= 0:  # the first start whose tail `stop` begins with is the longest such tail
        if stop.startswith(tail[start:]):
            return len(tail) - start
        start = tail.find(first, start + 1)
    return 0
