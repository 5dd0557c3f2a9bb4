"""/v1/chat/completions"""

import time
from collections.abc import AsyncIterator

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from app.api.chat.schemas import ChatCompletion, ChatCompletionCreate, Choice, Usage
from app.api.deps import AdmissionDep, BackendDep, OrgDep, RegistryDep, SessionDep, SettingsDep
from app.api.generation.choices import ChoiceRequest, choice_deltas, whole_choices
from app.api.generation.logprobs import TokenPieces, chat_logprobs
from app.api.generation.prompts import PromptAsk, prepare_prompts
from app.api.generation.streaming import ChunkEnvelope, event_stream, within_timeout
from app.api.usage.metering import CompletionMeter
from app.core import ids
from app.core.errors import InvalidRequest
from app.serving.backend import InferenceBackend, SamplingParams

router = APIRouter(prefix="/v1", tags=["inference"])


@router.post("/chat/completions", response_model=ChatCompletion)
async def create_chat_completion(
    body: ChatCompletionCreate,
    org: OrgDep,
    session: SessionDep,
    settings: SettingsDep,
    registry: RegistryDep,
    engine: BackendDep,
    admission: AdmissionDep,
) -> ChatCompletion | StreamingResponse:
    """Answer with a base model, or with a fine-tuned model's adapter applied to its base."""
    if body.top_logprobs is not None and not body.logprobs:
        raise InvalidRequest("top_logprobs needs logprobs set to true", param="top_logprobs")
    conversation = [message.as_plain() for message in body.messages]
    ask = PromptAsk(body.model, [conversation], body.max_completion_tokens or body.max_tokens, body.n, "chat")
    prompts = await prepare_prompts(ask, org, session, settings, registry, engine)
    model = prompts.model
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    params = SamplingParams(prompts.max_tokens, body.temperature, body.top_p, body.seed, logprobs, org.id)
    work = ChoiceRequest(model.base_model, model.adapter_prefix, prompts.ids[0], params, body.stop_list(), body.n)
    pieces = TokenPieces(prompts.tokenizer) if body.logprobs else None
    ticket = await admission.enter(org.id)
    envelope = ChunkEnvelope(
        "chat.completion.chunk", ids.new_id("chatcmpl"), int(time.time()), model.id, body.include_usage
    )
    meter = CompletionMeter(settings.require("database_url"), org.id, model.id, [work])
    if body.stream:
        return event_stream(settings, ticket, _chunks(engine, work, envelope, pieces), meter.count)
    choices = await within_timeout(settings, ticket, whole_choices(engine, work), meter.count)
    return ChatCompletion(
        id=envelope.id,
        created=envelope.created,
        model=model.id,
        choices=[
            Choice(
                index=index,
                message={"role": "assistant", "content": choice.text},
                finish_reason=choice.finish_reason,
                logprobs=chat_logprobs(choice.tokens, pieces) if pieces else None,
            )
            for index, choice in enumerate(choices)
        ],
        usage=Usage.of(work.prompt_tokens, work.completion_tokens),
    )


async def _chunks(
    engine: InferenceBackend, work: ChoiceRequest, envelope: ChunkEnvelope, pieces: TokenPieces | None
) -> AsyncIterator[dict]:
    """`chat.completion.chunk`s: the role first, then content deltas (with the log-probabilities of their tokens
    when asked for), a finish reason per choice, and the usage in a last chunk without choices when
    `stream_options.include_usage` asks for it."""
    started: set[int] = set()
    async for delta in choice_deltas(engine, work):
        logprobs = chat_logprobs(delta.tokens, pieces) if pieces and delta.tokens else None
        if delta.index not in started:
            started.add(delta.index)
            yield envelope.wrap([_choice(delta.index, {"role": "assistant", "content": delta.text}, None, logprobs)])
        elif delta.text or logprobs:
            yield envelope.wrap([_choice(delta.index, {"content": delta.text}, None, logprobs)])
        if delta.finish_reason is not None:
            yield envelope.wrap([_choice(delta.index, {}, delta.finish_reason)])
    if envelope.include_usage:
        yield envelope.usage(Usage.of(work.prompt_tokens, work.completion_tokens).model_dump())


def _choice(index: int, delta: dict, finish_reason: str | None, logprobs: dict | None = None) -> dict:
    return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
