"""The one way conversations become token ids, shared by training and inference.

Training and serving must build prompts identically (SmolLM2's template adds a default system prompt when
there is none), so both go through `render_prompt_ids` / `tokenize_example` here. The assistant spans for
the loss mask come from the model's own chat template: what it writes before an assistant reply (the generation
prompt) and after one (its end-of-turn text) is learnt from a two-message probe, each assistant turn is found in
ONE render of the conversation, and one tokenization with offsets maps those spans to tokens. Work is linear in the
conversation's length (rendering and re-tokenizing every prefix was quadratic: minutes for one long line). A
template the probe does not describe falls back to rendering prefixes and diffing them, which works for any.
"""

import os
import weakref
from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100  # label value that torch's cross-entropy skips


@dataclass(frozen=True)
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)


def _render(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
    # Untokenized, the template's output is a str (the library's return type covers every other option too).
    return tokenizer.apply_chat_template(  # type: ignore[return-value]
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def _encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    # The template already writes any BOS/special tokens into the text, as apply_chat_template does.
    input_ids: list[int] = tokenizer(text, add_special_tokens=False)["input_ids"]
    return input_ids


def _shared_prefix_length(a: list[int], b: list[int]) -> int:
    length = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        length += 1
    return length


def render_prompt_ids(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]]) -> list[int]:
    """Token ids of the conversation followed by the prompt for the assistant's reply."""
    return _encode(tokenizer, _render(tokenizer, messages, add_generation_prompt=True))


def _is_trained(message: dict[str, Any]) -> bool:
    return message.get("role") == "assistant" and message.get("weight", 1) != 0


def tokenize_example(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]], max_length: int, train_on_inputs: bool = False
) -> TokenizedExample:
    """Token ids of a conversation with labels on assistant tokens only, truncated to `max_length`.

    Each trained assistant turn covers its content and its end-of-turn token; the whitespace a template
    puts between turns is left out, as generation stops at the end-of-turn token and never produces it.
    Assistant messages with `"weight": 0` are context only. With `train_on_inputs` every token is labelled.
    """
    rendered = _render(tokenizer, messages, add_generation_prompt=False)
    text = rendered[: _chars_within(tokenizer, max_length)]  # tokens past max_length are dropped anyway
    if train_on_inputs:
        input_ids = _encode(tokenizer, text)[:max_length]
        return TokenizedExample(input_ids=input_ids, labels=input_ids)
    spans = _assistant_spans(tokenizer, messages, text, len(text) < len(rendered)) if tokenizer.is_fast else None
    if spans is None:
        return _tokenize_by_prefixes(tokenizer, messages, max_length)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids, offsets = encoded["input_ids"][:max_length], encoded["offset_mapping"][:max_length]
    labels = [IGNORE_INDEX] * len(input_ids)
    span_index = 0
    for position, (_, token_end) in enumerate(offsets):
        while span_index < len(spans) and token_end > spans[span_index][1]:
            span_index += 1
        if span_index == len(spans):
            break
        start, end = spans[span_index]
        if token_end > start and token_end <= end:  # a token reaching into the reply, and ending within it
            labels[position] = input_ids[position]
    return TokenizedExample(input_ids=input_ids, labels=labels)


# Per tokenizer, the template the marks were learnt from (a model given another template changes it) and the marks.
_TEMPLATE_MARKS: "weakref.WeakKeyDictionary[PreTrainedTokenizerBase, tuple[object, tuple[str, str] | None]]" = (
    weakref.WeakKeyDictionary()
)
_LONGEST_PIECE: "weakref.WeakKeyDictionary[PreTrainedTokenizerBase, int]" = weakref.WeakKeyDictionary()
_PROBE = "Lp7q reply"


def _template_marks(tokenizer: PreTrainedTokenizerBase) -> tuple[str, str] | None:
    """(what the template writes before an assistant reply, its end-of-turn text: what follows the reply up to
    whitespace), or None when a probe conversation does not show them."""
    template = tokenizer.chat_template
    kept = _TEMPLATE_MARKS.get(tokenizer)
    if kept is None or kept[0] != template:
        marks = None
        asked = [{"role": "user", "content": "Lp7q question"}]
        prompt = _render(tokenizer, asked, add_generation_prompt=True)
        without = _render(tokenizer, asked, add_generation_prompt=False)
        answered = _render(tokenizer, [*asked, {"role": "assistant", "content": _PROBE}], add_generation_prompt=False)
        if answered.startswith(prompt + _PROBE):
            # Phi-3's template ends a conversation with EOS unless it asks for a reply: what it adds for the reply
            # starts where the two renders part; its end-of-turn token is what follows the reply, up to whitespace.
            generation_prompt = prompt[len(os.path.commonprefix([prompt, without])) :]
            after = answered[len(prompt) + len(_PROBE) :].split()
            marks = (generation_prompt, after[0]) if generation_prompt and after else None
        kept = _TEMPLATE_MARKS[tokenizer] = (template, marks)
    return kept[1]


def _assistant_spans(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]], text: str, cut: bool
) -> list[tuple[int, int]] | None:
    """The character span of each trained assistant turn in `text` (from its content through its end-of-turn text),
    in order, found in one pass; None when the template writes a turn in a way the probe did not show (the caller
    then diffs renders of prefixes instead). When `text` was `cut` short, turns past the cut are left out."""
    marks = _template_marks(tokenizer)
    if marks is None:
        return None
    generation_prompt, end_of_turn = marks
    spans: list[tuple[int, int]] = []
    cursor = 0
    for message in messages:
        if message.get("role") != "assistant":
            continue
        content = message.get("content")
        if not isinstance(content, str):
            return None
        header = text.find(generation_prompt, cursor)
        if header < 0:
            return spans if cut else None
        start = header + len(generation_prompt)
        close = text.find(end_of_turn, start + len(content.strip()))
        if close < 0:
            if not (cut and content.strip().startswith(text[start:].strip())):
                return None
            if _is_trained(message):
                spans.append((start, len(text)))  # trained up to the cut
            return spans
        if text[start:close].strip() != content.strip():
            return None
        if _is_trained(message):
            spans.append((start, close + len(end_of_turn)))
        cursor = close + len(end_of_turn)
    return spans


def _chars_within(tokenizer: PreTrainedTokenizerBase, max_length: int) -> int:
    """A number of characters that surely holds the first `max_length` tokens (each covers at most as many
    characters as the vocabulary's longest piece), with room for the last word's tokens to be the same."""
    if tokenizer not in _LONGEST_PIECE:
        _LONGEST_PIECE[tokenizer] = max((len(piece) for piece in tokenizer.get_vocab()), default=1)
    return (max_length + 2) * _LONGEST_PIECE[tokenizer] + 1024


def _tokenize_by_prefixes(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]], max_length: int
) -> TokenizedExample:
    """The labels by rendering every prefix ending before and after each assistant turn and diffing their tokens:
    quadratic, but right for any template (the fallback when the probe does not describe it)."""
    input_ids = _encode(tokenizer, _render(tokenizer, messages, add_generation_prompt=False))
    labels = [IGNORE_INDEX] * len(input_ids)
    for index, message in enumerate(messages):
        if not _is_trained(message):
            continue
        before = _encode(tokenizer, _render(tokenizer, messages[:index], add_generation_prompt=True))
        through = _encode(tokenizer, _render(tokenizer, messages[: index + 1], add_generation_prompt=False).rstrip())
        start = _shared_prefix_length(before, input_ids)
        end = _shared_prefix_length(through, input_ids)
        labels[start:end] = input_ids[start:end]
    return TokenizedExample(input_ids=input_ids[:max_length], labels=labels[:max_length])
