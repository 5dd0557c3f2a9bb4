"""The `n` choices of one completion request as text deltas, for the chat and completions endpoints alike."""

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

from starlette.concurrency import run_in_threadpool

from app.serving.arriving import arriving
from app.serving.backend import GeneratedToken, InferenceBackend, SamplingParams, TokenStream
from app.serving.detokenize import Detokenizer, FinishReason


@dataclass(frozen=True)
class ChoiceDelta:
    index: int
    text: str
    finish_reason: FinishReason | None  # set on the last delta of a choice
    tokens: tuple[GeneratedToken, ...] = ()  # generated since the previous delta (an end-of-turn token left out)


@dataclass(frozen=True)
class WholeChoice:
    text: str
    finish_reason: FinishReason
    tokens: tuple[GeneratedToken, ...]


@dataclass
class ChoiceRequest:
    base_model_id: str
    adapter_name: str | None
    prompt_ids: list[int]
    params: SamplingParams
    stop: list[str]
    n: int
    completion_tokens: int = 0  # counted as the choices are generated

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)


async def choice_deltas(engine: InferenceBackend, request: ChoiceRequest) -> AsyncIterator[ChoiceDelta]:
    """Deltas of all choices as they come (the n rows decode together in the engine's batch); each choice ends
    with a delta that has its finish reason.

    Choice i samples with seed + i, so a seeded request gives the same n texts every time. Leaving the loop
    early (a client that disconnected, a timeout) cancels every generation still running.
    """
    streams: list[TokenStream] = []
    readers: list[asyncio.Task] = []
    deltas: asyncio.Queue[ChoiceDelta | BaseException] = asyncio.Queue()
    try:
        for index in range(request.n):
            seed = request.params.seed + index if request.params.seed is not None else None
            params = replace(request.params, seed=seed)
            streams.append(
                await run_in_threadpool(
                    engine.stream_tokens, request.base_model_id, request.adapter_name, request.prompt_ids, params
                )
            )
        readers = [asyncio.create_task(_read(engine, request, i, tokens, deltas)) for i, tokens in enumerate(streams)]
        finished = 0
        while finished < request.n:
            item = await deltas.get()
            if isinstance(item, BaseException):
                raise item
            finished += item.finish_reason is not None
            yield item
    finally:
        for tokens in streams:
            tokens.cancel()
        for reader in readers:
            reader.cancel()


async def _read(
    engine: InferenceBackend,
    request: ChoiceRequest,
    index: int,
    tokens: TokenStream,
    deltas: "asyncio.Queue[ChoiceDelta | BaseException]",
) -> None:
    """Puts choice `index`'s deltas on the queue, the last with its finish reason (or the error it met)."""
    end_ids = engine.end_of_turn_ids(request.base_model_id)
    text = Detokenizer(engine.tokenizer(request.base_model_id), end_ids, request.stop)
    pending: list[GeneratedToken] = []  # tokens whose text has not been sent with a delta yet
    try:
        async for token in arriving(tokens):  # on this loop: no thread of the shared pool waits for tokens
            if token.id not in end_ids:
                pending.append(token)
            if delta := text.feed(token.id):
                deltas.put_nowait(ChoiceDelta(index, delta, None, tuple(pending)))
                pending.clear()
            if text.finished:
                break
    except Exception as error:
        deltas.put_nowait(error)
        return
    finally:
        tokens.cancel()
    deltas.put_nowait(ChoiceDelta(index, text.close(), text.finish_reason, tuple(pending)))
    request.completion_tokens += text.completion_tokens


async def whole_choices(engine: InferenceBackend, request: ChoiceRequest) -> list[WholeChoice]:
    """Each choice's full text, finish reason and tokens."""
    texts = [""] * request.n
    reasons: list[FinishReason] = ["length"] * request.n
    tokens: list[tuple[GeneratedToken, ...]] = [()] * request.n
    async for delta in choice_deltas(engine, request):
        texts[delta.index] += delta.text
        tokens[delta.index] += delta.tokens
        if delta.finish_reason is not None:
            reasons[delta.index] = delta.finish_reason
    return [WholeChoice(*choice) for choice in zip(texts, reasons, tokens, strict=True)]
