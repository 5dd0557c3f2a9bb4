"""/v1/completions

A prompt is sent as one user turn through the model's chat template, exactly as prompt/completion training
examples are trained, so a model fine-tuned on such examples sees at inference what it saw in training.
"""

import time
from collections.abc import AsyncIterator

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from app.api.chat.schemas import Usage
from app.api.completions.schemas import Completion, CompletionChoice, CompletionCreate
from app.api.deps import AdmissionDep, BackendDep, OrgDep, RegistryDep, SessionDep, SettingsDep
from app.api.generation.choices import ChoiceRequest, WholeChoice, choice_deltas, whole_choices
from app.api.generation.logprobs import TokenPieces, completion_logprobs
from app.api.generation.prompts import PromptAsk, prepare_prompts
from app.api.generation.streaming import ChunkEnvelope, event_stream, within_timeout
from app.api.usage.metering import CompletionMeter
from app.core import ids
from app.serving.backend import InferenceBackend, SamplingParams

router = APIRouter(prefix="/v1", tags=["inference"])


@router.post("/completions", response_model=Completion)
async def create_completion(
    body: CompletionCreate,
    org: OrgDep,
    session: SessionDep,
    settings: SettingsDep,
    registry: RegistryDep,
    engine: BackendDep,
    admission: AdmissionDep,
) -> Completion | StreamingResponse:
    """Complete each prompt, sent as one user turn, with a base or fine-tuned model."""
    conversations = [[{"role": "user", "content": prompt}] for prompt in body.prompts()]
    ask = PromptAsk(body.model, conversations, body.max_tokens, body.n * len(conversations), "completions")
    prompts = await prepare_prompts(ask, org, session, settings, registry, engine)
    model = prompts.model
    params = SamplingParams(prompts.max_tokens, body.temperature, body.top_p, body.seed, body.logprobs, org.id)
    pieces = TokenPieces(prompts.tokenizer) if body.logprobs is not None else None
    works = [
        ChoiceRequest(model.base_model, model.adapter_prefix, prompt_ids, params, body.stop_list(), body.n)
        for prompt_ids in prompts.ids
    ]
    ticket = await admission.enter(org.id)
    envelope = ChunkEnvelope("text_completion", ids.new_id("cmpl"), int(time.time()), model.id, body.include_usage)
    meter = CompletionMeter(settings.require("database_url"), org.id, model.id, works)
    if body.stream:
        return event_stream(settings, ticket, _chunks(engine, works, envelope, body.n, pieces), meter.count)
    results = await within_timeout(settings, ticket, _whole(engine, works), meter.count)
    return Completion(
        id=envelope.id,
        created=envelope.created,
        model=model.id,
        choices=[
            CompletionChoice(
                index=index,
                text=choice.text,
                finish_reason=choice.finish_reason,
                logprobs=completion_logprobs(choice.tokens, pieces, 0) if pieces else None,
            )
            for index, choice in enumerate(results)
        ],
        usage=_usage(works),
    )


async def _whole(engine: InferenceBackend, works: list[ChoiceRequest]) -> list[WholeChoice]:
    """The choices of every prompt, prompt by prompt: choice j of prompt i has index i·n + j, as OpenAI's."""
    return [choice for work in works for choice in await whole_choices(engine, work)]


async def _chunks(
    engine: InferenceBackend, works: list[ChoiceRequest], envelope: ChunkEnvelope, n: int, pieces: TokenPieces | None
) -> AsyncIterator[dict]:
    sent: dict[int, int] = {}  # characters of each choice's text streamed so far: where its next tokens begin
    for offset, work in enumerate(works):
        async for delta in choice_deltas(engine, work):
            if delta.text or delta.finish_reason or (pieces and delta.tokens):
                index = offset * n + delta.index
                logprobs = completion_logprobs(delta.tokens, pieces, sent.get(index, 0)) if pieces else None
                sent[index] = sent.get(index, 0) + len(delta.text)
                choice = {"index": index, "text": delta.text, "logprobs": logprobs}
                yield envelope.wrap([choice | {"finish_reason": delta.finish_reason}])
    if envelope.include_usage:
        yield envelope.usage(_usage(works).model_dump())


def _usage(works: list[ChoiceRequest]) -> Usage:
    return Usage.of(sum(w.prompt_tokens for w in works), sum(w.completion_tokens for w in works))
