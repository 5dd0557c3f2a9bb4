"""The `n` choices of one completion request as text deltas, for the chat and completions endpoints alike."""

from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

from starlette.concurrency import run_in_threadpool

from app.inference.detokenize import Detokenizer, FinishReason
from app.inference.engine import InferenceEngine, SamplingParams

_END = object()


@dataclass(frozen=True)
class ChoiceDelta:
    index: int
    text: str
    finish_reason: FinishReason | None  # set on the last delta of a choice


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


async def choice_deltas(engine: InferenceEngine, request: ChoiceRequest) -> AsyncIterator[ChoiceDelta]:
    """Deltas of choice 0, then choice 1, …; each choice ends with a delta that has its finish reason.

    Choice i samples with seed + i, so a seeded request gives the same n texts every time. Leaving the loop
    early (a client that disconnected, a timeout) cancels the generation in progress.
    """
    for index in range(request.n):
        seed = request.params.seed + index if request.params.seed is not None else None
        params = replace(request.params, seed=seed)
        tokens = await run_in_threadpool(
            engine.stream_tokens, request.base_model_id, request.adapter_name, request.prompt_ids, params
        )
        text = Detokenizer(
            engine.tokenizer(request.base_model_id), engine.end_of_turn_ids(request.base_model_id), request.stop
        )
        try:
            while not text.finished and (token := await run_in_threadpool(next, tokens, _END)) is not _END:
                if delta := text.feed(token):
                    yield ChoiceDelta(index, delta, None)
        finally:
            tokens.cancel()
        yield ChoiceDelta(index, text.close(), text.finish_reason)
        request.completion_tokens += text.completion_tokens


async def whole_choices(engine: InferenceEngine, request: ChoiceRequest) -> list[tuple[str, FinishReason]]:
    """Each choice's full text and finish reason."""
    texts = [""] * request.n
    reasons: list[FinishReason] = ["length"] * request.n
    async for delta in choice_deltas(engine, request):
        texts[delta.index] += delta.text
        if delta.finish_reason is not None:
            reasons[delta.index] = delta.finish_reason
    return list(zip(texts, reasons, strict=True))
