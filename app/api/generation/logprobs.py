"""Log-probabilities in OpenAI's two shapes: chat's `logprobs.content` entries (token, logprob, bytes,
top_logprobs) and legacy completions' parallel lists (tokens, token_logprobs, top_logprobs, text_offset)."""

import re
from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase
from transformers.convert_slow_tokenizer import bytes_to_unicode

from app.serving.backend import GeneratedToken

_INCOMPLETE_CHARACTER = "\ufffd"
_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # sentencepiece's byte tokens
_BYTE_OF_CHARACTER = {character: byte for byte, character in bytes_to_unicode().items()}  # byte-level BPE's alphabet


class TokenPieces:
    """Each token's text and UTF-8 bytes as OpenAI shows them. A token that holds part of a multi-byte character
    gets its own bytes (not those of the replacement character that decoding it alone gives), and its text shows
    them escaped, e.g. `\\xe2\\x80`."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self._tokenizer = tokenizer
        self._known: dict[int, tuple[str, list[int]]] = {}

    def __call__(self, token_id: int) -> tuple[str, list[int]]:
        known = self._known.get(token_id)
        if known is None:
            known = self._known[token_id] = self._describe(token_id)
        return known

    def text(self, token_id: int) -> str:
        return self(token_id)[0]

    def _describe(self, token_id: int) -> tuple[str, list[int]]:
        # One sequence of ids decodes to a str, and one id converts to one token (the library's return types cover
        # batches too).
        text: str = self._tokenizer.decode([token_id])  # type: ignore[assignment]
        if _INCOMPLETE_CHARACTER in text:
            raw = _raw_bytes(self._tokenizer.convert_ids_to_tokens(token_id))  # type: ignore[arg-type]
            if raw is not None:
                return raw.decode("utf-8", errors="backslashreplace"), list(raw)
        return text, list(text.encode())


def _raw_bytes(piece: str) -> bytes | None:
    if match := _BYTE_FALLBACK.fullmatch(piece):
        return bytes([int(match.group(1), 16)])
    if piece and all(character in _BYTE_OF_CHARACTER for character in piece):
        return bytes(_BYTE_OF_CHARACTER[character] for character in piece)
    return None


def chat_logprobs(tokens: Sequence[GeneratedToken], pieces: TokenPieces) -> dict:
    """A chat choice's (or chunk's) `logprobs` object."""
    return {"content": [_chat_entry(token, pieces) for token in tokens], "refusal": None}


def _chat_entry(token: GeneratedToken, pieces: TokenPieces) -> dict:
    text, raw = pieces(token.id)
    alternatives = [
        {"token": pieces.text(other), "logprob": logprob, "bytes": pieces(other)[1]}
        for other, logprob in token.top_logprobs
    ]
    return {"token": text, "logprob": token.logprob, "bytes": raw, "top_logprobs": alternatives}


def completion_logprobs(tokens: Sequence[GeneratedToken], pieces: TokenPieces, text_offset: int) -> dict:
    """A text completion choice's (or chunk's) `logprobs` object; `text_offset` is where the first token's text
    begins in the completion. Each position's `top_logprobs` holds the sampled token too, as OpenAI's does."""
    texts = [pieces.text(token.id) for token in tokens]
    offsets = []
    for text in texts:
        offsets.append(text_offset)
        text_offset += len(text)
    return {
        "tokens": texts,
        "token_logprobs": [token.logprob for token in tokens],
        "top_logprobs": [
            {pieces.text(other): logprob for other, logprob in (*token.top_logprobs, (token.id, token.logprob))}
            for token in tokens
        ],
        "text_offset": offsets,
    }
