"""Log-probabilities as OpenAI shows them: each token's text and bytes (bytes that add up to the text even where a
character is split over tokens), and the legacy completions' lists with their text offsets."""

import math

from transformers import PreTrainedTokenizerFast

from app.api.generation.logprobs import TokenPieces, _raw_bytes, chat_logprobs, completion_logprobs
from app.serving.backend import GeneratedToken

TEXT = "Price: 5€ ☃ naïve"


def test_token_bytes_add_up_to_the_text_even_inside_a_character(tokenizer: PreTrainedTokenizerFast) -> None:
    ids = tokenizer.encode(TEXT, add_special_tokens=False)
    pieces = TokenPieces(tokenizer)

    assert b"".join(bytes(pieces(token)[1]) for token in ids) == TEXT.encode()
    split = [pieces(token)[0] for token in ids if "\ufffd" in tokenizer.decode([token])]
    assert split and all("\\x" in text for text in split)  # the tiny vocabulary splits €, ☃ and ï into bytes
    whole = [token for token in ids if "\ufffd" not in tokenizer.decode([token])]
    assert all(pieces(token)[0] == tokenizer.decode([token]) for token in whole)


def test_chat_entries_hold_each_token_and_its_alternatives(tokenizer: PreTrainedTokenizerFast) -> None:
    hello, world = tokenizer.encode("Hello world", add_special_tokens=False)[:2]
    tokens = [GeneratedToken(hello, -0.25, ((hello, -0.25), (world, -2.0))), GeneratedToken(world, -0.5, ())]

    logprobs = chat_logprobs(tokens, TokenPieces(tokenizer))

    first, second = logprobs["content"]
    assert first["token"] == tokenizer.decode([hello]) and first["logprob"] == -0.25
    assert first["bytes"] == list(tokenizer.decode([hello]).encode())
    assert [(alt["token"], alt["logprob"]) for alt in first["top_logprobs"]] == [
        (tokenizer.decode([hello]), -0.25),
        (tokenizer.decode([world]), -2.0),
    ]
    assert second["top_logprobs"] == [] and logprobs["refusal"] is None


def test_completion_lists_give_offsets_into_the_text_and_the_sampled_token(tokenizer: PreTrainedTokenizerFast) -> None:
    ids = tokenizer.encode("one two three", add_special_tokens=False)
    runner_up = ids[0]
    tokens = [GeneratedToken(token, math.log(0.5), ((runner_up, math.log(0.4)),)) for token in ids]

    logprobs = completion_logprobs(tokens, TokenPieces(tokenizer), text_offset=7)

    assert "".join(logprobs["tokens"]) == "one two three"
    for token, offset in zip(logprobs["tokens"], logprobs["text_offset"], strict=True):
        assert ("x" * 7 + "one two three")[offset : offset + len(token)] == token
    assert logprobs["token_logprobs"] == [math.log(0.5)] * len(ids)
    sampled_second = logprobs["top_logprobs"][1]  # the runner-up and the sampled token, up to logprobs + 1 entries
    assert sampled_second == {tokenizer.decode([runner_up]): math.log(0.4), logprobs["tokens"][1]: math.log(0.5)}


def test_sentencepiece_byte_tokens_give_their_byte() -> None:
    assert _raw_bytes("<0xE2>") == b"\xe2"
    assert _raw_bytes("Ġworld") == b" world"  # byte-level BPE's alphabet: Ġ is the space byte
