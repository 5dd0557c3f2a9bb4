"""The prompt path chat and completions share: the server's limits, the model, its tokenizer, then the prompts' token
ids, checked against the model's context before anything is admitted.

A prompt is measured in characters first. No token spans more characters than the vocabulary's longest token, so a
text longer than the context times that length cannot fit, and is refused without tokenizing it (the audit measured
0.4-0.75 s per MiB with SmolLM2's tokenizer). What is tokenized is tokenized in a worker thread, so a long prompt
never holds the event loop. A prompt that, with the completion asked for, exceeds the context is refused with
OpenAI's `context_length_exceeded`; without `max_tokens`, the completion gets what the context leaves, up to the
default.
"""

from dataclasses import dataclass
from typing import Any, Literal
from weakref import WeakKeyDictionary

from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from transformers import PreTrainedTokenizerBase

from app.api.generation.streaming import checked_limits
from app.api.models.service import resolve
from app.core.errors import BaseModelRemoved, InvalidRequest
from app.core.settings import Settings
from app.core.tables import Organization
from app.ml.base_models.registry import BaseModelRegistry, UnknownBaseModel
from app.ml.chat_format import render_prompt_ids
from app.ml.models import ModelRef
from app.serving.backend import InferenceBackend

Conversation = list[dict[str, Any]]
Endpoint = Literal["chat", "completions"]


@dataclass(frozen=True)
class PromptAsk:
    """What a request asks of the prompt path."""

    model: str
    conversations: list[Conversation]  # chat: the conversation; completions: each prompt as one user turn
    max_tokens: int | None  # per choice; None: the default, within what the context leaves
    choices: int  # choices in all, checked against the server's limit
    endpoint: Endpoint  # whose wording the refusals use


@dataclass(frozen=True)
class Prompts:
    model: ModelRef
    tokenizer: PreTrainedTokenizerBase
    ids: list[list[int]]  # one per conversation of the ask
    max_tokens: int  # per choice, fitted to the context


async def prepare_prompts(
    ask: PromptAsk,
    org: Organization,
    session: Session,
    settings: Settings,
    registry: BaseModelRegistry,
    engine: InferenceBackend,
) -> Prompts:
    """The ask's prompts as token ids of its model, or the OpenAI-shaped refusal of a prompt that does not fit."""
    max_tokens = checked_limits(settings, ask.max_tokens, ask.choices)
    model = await run_in_threadpool(_resolve_and_release, session, registry, org, ask.model)
    try:
        tokenizer, context, token_chars = await run_in_threadpool(_limits, engine, registry, model.base_model)
    except UnknownBaseModel:  # `loraport base-models remove --force` left its fine-tuned models without it
        raise BaseModelRemoved(model.id, model.base_model) from None
    for conversation in ask.conversations:
        characters = sum(len(message["content"]) for message in conversation)
        if characters > context * token_chars:
            raise _refusal(ask.endpoint, _too_many_characters(ask.endpoint, context, characters))
    ids = await run_in_threadpool(_tokenize, tokenizer, ask.conversations)
    longest = max(len(prompt) for prompt in ids)
    if ask.max_tokens is not None and longest + ask.max_tokens > context:
        raise _refusal(ask.endpoint, _over_with_completion(ask.endpoint, context, longest, ask.max_tokens))
    if longest >= context:  # no room for even one token of completion
        message = (
            _over(ask.endpoint, context, longest)
            if longest > context
            else _over_with_completion(ask.endpoint, context, longest, 1)
        )
        raise _refusal(ask.endpoint, message)
    return Prompts(model, tokenizer, ids, min(max_tokens, context - longest))


def _resolve_and_release(session: Session, registry: BaseModelRegistry, org: Organization, model_id: str) -> ModelRef:
    """The model, read in a worker thread: a database that answers slowly must not stop the event loop, which every
    other request's tokens go through. Then the connection goes back: generation can take seconds."""
    try:
        return resolve(session, registry, org, model_id)
    finally:
        session.close()


def _limits(
    engine: InferenceBackend, registry: BaseModelRegistry, base_model: str
) -> tuple[PreTrainedTokenizerBase, int, int]:
    """The tokenizer, the context length and the most characters one token spans (loading them can block)."""
    tokenizer = engine.tokenizer(base_model)
    return tokenizer, registry.context_length(base_model), _longest_token(tokenizer)


def _tokenize(tokenizer: PreTrainedTokenizerBase, conversations: list[Conversation]) -> list[list[int]]:
    return [render_prompt_ids(tokenizer, conversation) for conversation in conversations]


_token_chars: "WeakKeyDictionary[PreTrainedTokenizerBase, int]" = WeakKeyDictionary()


def _longest_token(tokenizer: PreTrainedTokenizerBase) -> int:
    """The characters of the vocabulary's longest entry: a bound on the characters one token covers (a byte-level
    vocabulary writes one character per byte, so it is at least the characters of the text it stands for)."""
    if tokenizer not in _token_chars:
        _token_chars[tokenizer] = max((len(token) for token in tokenizer.get_vocab()), default=1)
    return _token_chars[tokenizer]


def _refusal(endpoint: Endpoint, message: str) -> InvalidRequest:
    param = "messages" if endpoint == "chat" else "prompt"
    return InvalidRequest(message, param=param, code="context_length_exceeded")


# OpenAI's wording, which clients match on: chat's, and the legacy completions endpoint's.
def _over(endpoint: Endpoint, context: int, prompt: int) -> str:
    if endpoint == "chat":
        return (
            f"This model's maximum context length is {context} tokens. However, your messages resulted in {prompt} "
            "tokens. Please reduce the length of the messages."
        )
    return (
        f"This model's maximum context length is {context} tokens, however your prompt resulted in {prompt} tokens. "
        "Please reduce your prompt."
    )


def _over_with_completion(endpoint: Endpoint, context: int, prompt: int, completion: int) -> str:
    if endpoint == "chat":
        return (
            f"This model's maximum context length is {context} tokens. However, you requested {prompt + completion} "
            f"tokens ({prompt} in the messages, {completion} in the completion). Please reduce the length of the "
            "messages or completion."
        )
    return (
        f"This model's maximum context length is {context} tokens, however you requested {prompt + completion} "
        f"tokens ({prompt} in your prompt; {completion} for the completion). Please reduce your prompt; or "
        "completion length."
    )


def _too_many_characters(endpoint: Endpoint, context: int, characters: int) -> str:
    if endpoint == "chat":
        return (
            f"This model's maximum context length is {context} tokens. However, your messages are {characters} "
            f"characters long, more than {context} tokens can hold. Please reduce the length of the messages."
        )
    return (
        f"This model's maximum context length is {context} tokens, however your prompt is {characters} characters "
        f"long, more than {context} tokens can hold. Please reduce your prompt."
    )
