"""Chat templates: the model's own, one given when it is added (a built-in name or a Jinja file), or Loraport's
default for a model that has none; and the check, made when a model is added, that a template can be trained on
and served: it renders a test conversation, the loss mask finds exactly the assistant's replies, and the token that
ends a turn is one the tokenizer knows, so that generation stops there.
"""

import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from transformers import PreTrainedTokenizerBase

from app.ml.chat_format import IGNORE_INDEX, tokenize_example

TemplateSource = Literal["model", "given", "default"]

# Each family's canonical template, as its official tokenizer_config.json carries it, without tools and images.
BUILT_IN_TEMPLATES: dict[str, str] = {
    # ChatML (Qwen, SmolLM2, OpenHermes), without a default system prompt.
    "chatml": (
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    # Llama-3-Instruct.
    "llama3": (
        "{% for message in messages %}"
        "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
        " + message['content'] | trim + '<|eot_id|>' %}"
        "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
        "{{ content }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
    ),
    # Gemma 3 (and Gemma 2 with a system message): no system role, so it opens the first user turn.
    "gemma": (
        "{{ bos_token }}"
        "{% if messages[0]['role'] == 'system' %}"
        "{% set first_user_prefix = messages[0]['content'] + '\n\n' %}{% set loop_messages = messages[1:] %}"
        "{% else %}"
        "{% set first_user_prefix = '' %}{% set loop_messages = messages %}"
        "{% endif %}"
        "{% for message in loop_messages %}"
        "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
        "{% endif %}"
        "{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
        "{% endif %}"
        "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '')"
        " + message['content'] | trim + '<end_of_turn>\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
    ),
    # Mistral-7B-Instruct-v0.2: no system role, so it opens the first user turn; a reply ends with EOS.
    "mistral": (
        "{% if messages[0]['role'] == 'system' %}"
        "{% set system_message = messages[0]['content'] %}{% set loop_messages = messages[1:] %}"
        "{% else %}"
        "{% set loop_messages = messages %}"
        "{% endif %}"
        "{{ bos_token }}"
        "{% for message in loop_messages %}"
        "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('After the optional system message, conversation roles must alternate"
        " user/assistant/user/assistant/...') }}"
        "{% endif %}"
        "{% if message['role'] == 'user' %}"
        "{% if loop.first and system_message is defined %}"
        "{{ ' [INST] ' + system_message + '\n\n' + message['content'] + ' [/INST]' }}"
        "{% else %}"
        "{{ ' [INST] ' + message['content'] + ' [/INST]' }}"
        "{% endif %}"
        "{% elif message['role'] == 'assistant' %}"
        "{{ ' ' + message['content'] + eos_token }}"
        "{% else %}"
        "{{ raise_exception('Only user and assistant roles are supported, with the exception of an initial"
        " optional system message!') }}"
        "{% endif %}"
        "{% endfor %}"
    ),
    # Phi-3-mini-instruct.
    "phi3": (
        "{% for message in messages %}"
        "{% if message['role'] == 'system' %}{{ '<|system|>\n' + message['content'] + '<|end|>\n' }}"
        "{% elif message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + '<|end|>\n' }}"
        "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\n' + message['content'] + '<|end|>\n' }}"
        "{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
    ),
}

# For a model with no template: each turn is its role as a plain-text header, a newline and the content; an
# assistant turn ends with the model's EOS token, which a base model already knows as "stop here". BOS starts the
# text when the tokenizer has one distinct from EOS (Llama, Gemma and Mistral base models expect it).
DEFAULT_TEMPLATE = (
    "{{ bos_token if bos_token is defined and bos_token != eos_token else '' }}"
    "{% for message in messages %}"
    "{{ message['role'] | capitalize + ':\n' + message['content'] | trim }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
    "{{ '\n\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:\n' }}{% endif %}"
)

_ONE_TURN = [
    {"role": "system", "content": "You answer in one short sentence."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris is the capital of France."},
]
_TWO_TURNS = [
    {"role": "user", "content": "Hello! How are you today?"},
    {"role": "assistant", "content": "It is fine, thank you."},
    {"role": "user", "content": "Tell me a joke."},
    {"role": "assistant", "content": "Why not?"},
]
_PROBE = "Lp7q reply"


class ChatTemplateError(ValueError):
    """A chat template that Loraport cannot train on or serve with; the message says why and what to do."""


@dataclass(frozen=True)
class TemplateCheck:
    """What the check learnt: the text that ends an assistant turn, its token, and every token that ends a reply."""

    end_of_turn: str
    end_of_turn_id: int
    stop_ids: frozenset[int]  # the end-of-turn token and EOS


def template_from_option(value: str, relative_to: Path = Path()) -> str:
    """The Jinja text of a built-in template name or of a template file (a relative path from `relative_to`)."""
    if value in BUILT_IN_TEMPLATES:
        return BUILT_IN_TEMPLATES[value]
    path = relative_to / value
    built_ins = ", ".join(sorted(BUILT_IN_TEMPLATES))
    if not path.is_file():
        raise ChatTemplateError(f"chat template {value!r} is neither a built-in ({built_ins}) nor a Jinja file")
    text = path.read_text()
    try:
        ImmutableSandboxedEnvironment().parse(text)
    except TemplateError as error:
        raise ChatTemplateError(f"chat template file {str(path)!r} is not valid Jinja: {error}") from None
    return text


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase, template: str | None) -> TemplateSource:
    """Sets the tokenizer's chat template: `template` when given, else its own, else `DEFAULT_TEMPLATE`."""
    if template is not None:
        tokenizer.chat_template = template
        return "given"
    if tokenizer.chat_template:
        return "model"
    tokenizer.chat_template = DEFAULT_TEMPLATE
    return "default"


_CHECKS: "weakref.WeakKeyDictionary[PreTrainedTokenizerBase, tuple[object, TemplateCheck | str]]" = (
    weakref.WeakKeyDictionary()
)


def check_chat_template(tokenizer: PreTrainedTokenizerBase) -> TemplateCheck:
    """What ends an assistant turn, once the tokenizer's template is shown to be trainable and servable; raises
    `ChatTemplateError` with the reason otherwise. Kept per tokenizer and template."""
    template = tokenizer.chat_template
    kept = _CHECKS.get(tokenizer)
    if kept is None or kept[0] != template:
        try:
            kept = (template, _check(tokenizer))
        except ChatTemplateError as error:
            kept = (template, str(error))
        _CHECKS[tokenizer] = kept
    if isinstance(kept[1], str):
        raise ChatTemplateError(kept[1])
    return kept[1]


def end_of_turn_ids(tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """The tokens that end a reply: the template's end-of-turn token and EOS (only EOS when the template fails the
    check, which adding the model and creating a job refuse anyway)."""
    try:
        return set(check_chat_template(tokenizer).stop_ids)
    except ChatTemplateError:
        return {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()


def _check(tokenizer: PreTrainedTokenizerBase) -> TemplateCheck:
    if not tokenizer.chat_template:
        raise ChatTemplateError("the tokenizer has no chat template; give one (a built-in name or a Jinja file)")
    for conversation in (_ONE_TURN, _TWO_TURNS):
        _render(tokenizer, conversation, add_generation_prompt=False)
    if _render(tokenizer, _ONE_TURN, add_generation_prompt=False) == _render_as_user(tokenizer, _ONE_TURN):
        raise ChatTemplateError(
            "the chat template has no assistant marker: it writes an assistant's turn as it writes a user's, so "
            "the model could not tell when it is its turn to answer; give a template that marks assistant turns"
        )
    end_of_turn, token_id = _end_of_turn(tokenizer)
    for conversation in (_ONE_TURN, _TWO_TURNS):
        _check_spans(tokenizer, conversation, end_of_turn)
    stop_ids = {token_id} | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set())
    return TemplateCheck(end_of_turn=end_of_turn, end_of_turn_id=token_id, stop_ids=frozenset(stop_ids))


def _render(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
    roles = "/".join(message["role"] for message in messages)
    try:
        # Untokenized, the template's output is a str (the library's return type covers every other option too).
        return tokenizer.apply_chat_template(  # type: ignore[return-value]
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    except (TemplateError, ValueError, TypeError, KeyError, IndexError) as error:
        raise ChatTemplateError(f"the chat template fails to render a test conversation ({roles}): {error}") from None


def _render_as_user(tokenizer: PreTrainedTokenizerBase, conversation: list[dict[str, Any]]) -> str | None:
    """The conversation with its last turn sent as a user's, or None when the template refuses that."""
    as_user = [*conversation[:-1], {**conversation[-1], "role": "user"}]
    try:
        return _render(tokenizer, as_user, add_generation_prompt=False)
    except ChatTemplateError:
        return None


def _end_of_turn(tokenizer: PreTrainedTokenizerBase) -> tuple[str, int]:
    """The special token the template writes right after an assistant's reply: its text and id."""
    asked = [{"role": "user", "content": "Lp7q question"}]
    answered = _render(tokenizer, [*asked, {"role": "assistant", "content": _PROBE}], add_generation_prompt=False)
    reply = answered.rfind(_PROBE)
    if reply < 0:
        raise ChatTemplateError("the chat template does not write the assistant's reply into the conversation")
    after = answered[reply + len(_PROBE) :].lstrip()
    if not after:
        raise ChatTemplateError(
            "the chat template writes nothing after an assistant's reply, so the model could not learn to stop; "
            "give a template that ends each assistant turn with an end-of-turn token or {{ eos_token }}"
        )
    first = _encode(tokenizer, after)[0]
    if first not in set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder):
        raise ChatTemplateError(
            f"the chat template ends an assistant turn with {after.split()[0]!r}, which is not one special token "
            "of this model's tokenizer, so generation could not stop there; give the template of the model's "
            "family, or none to use Loraport's default, which ends a turn with EOS"
        )
    text: str = tokenizer.convert_ids_to_tokens(first)  # type: ignore[assignment]  # one id gives one token
    return text, first


def _check_spans(tokenizer: PreTrainedTokenizerBase, conversation: list[dict[str, Any]], end_of_turn: str) -> None:
    """The loss mask of the conversation covers each reply and its end-of-turn token, and nothing else."""
    example = tokenize_example(tokenizer, conversation, max_length=4096)
    labelled = _trained_texts(tokenizer, example.input_ids, example.labels)
    answers = [message["content"] for message in conversation if message["role"] == "assistant"]
    if [text.strip() for text in labelled] != [answer + end_of_turn for answer in answers]:
        raise ChatTemplateError(
            f"the loss mask cannot find the assistant's replies in the chat template's output: the replies "
            f"{answers!r} came out as {labelled!r}; give a template that writes each reply whole, then "
            f"{end_of_turn!r}"
        )
    prompt_ids = _encode(tokenizer, _render(tokenizer, _prompt_of(conversation), add_generation_prompt=True))
    if example.input_ids[: len(prompt_ids)] != prompt_ids:
        raise ChatTemplateError(
            "the chat template writes the prompt for a reply differently from the start of that reply in a "
            "conversation, so a fine-tuned model would be served a prompt it was not trained on (Qwen3's own template "
            "does this with its <think> block); give a built-in one instead, such as chatml for Qwen models"
        )


def _trained_texts(tokenizer: PreTrainedTokenizerBase, input_ids: list[int], labels: list[int]) -> list[str]:
    """The text of each run of tokens that the loss is computed on."""
    runs: list[list[int]] = []
    for position, (token, label) in enumerate(zip(input_ids, labels, strict=True)):
        if label == IGNORE_INDEX:
            continue
        if position == 0 or labels[position - 1] == IGNORE_INDEX:
            runs.append([])
        runs[-1].append(token)
    # One sequence of ids decodes to a str (the library's return type covers batches of sequences too).
    return [str(tokenizer.decode(run)) for run in runs]


def _prompt_of(conversation: list[dict[str, Any]]) -> list[dict[str, Any]]:
    last_reply = max(i for i, message in enumerate(conversation) if message["role"] == "assistant")
    return conversation[:last_reply]


def _encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    ids: list[int] = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids
