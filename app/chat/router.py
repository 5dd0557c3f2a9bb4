"""/v1/chat/completions"""

import time

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from app import ids
from app.catalog.service import resolve
from app.chat.schemas import ChatCompletion, ChatCompletionCreate, Choice, Usage
from app.deps import OrgDep, SessionDep, SettingsDep
from app.errors import InvalidRequest

router = APIRouter(prefix="/v1", tags=["inference"])

_DEFAULT_MAX_TOKENS = 256


@router.post("/chat/completions", response_model=ChatCompletion)
async def create_chat_completion(
    body: ChatCompletionCreate, request: Request, org: OrgDep, session: SessionDep, settings: SettingsDep
) -> ChatCompletion:
    """Answer with a base model, or with a fine-tuned model's adapter applied to its base."""
    if body.stream:
        raise InvalidRequest("Streaming is not supported yet; send stream=false", param="stream")
    model = resolve(session, request.app.state.registry, org, body.model)
    session.close()  # generation can take seconds; hold no database connection meanwhile
    max_tokens = body.max_completion_tokens or body.max_tokens or _DEFAULT_MAX_TOKENS
    if max_tokens > settings.max_new_tokens_limit:
        raise InvalidRequest(
            f"max_tokens is {max_tokens}; the most this server generates is {settings.max_new_tokens_limit}",
            param="max_tokens",
        )
    completion = await run_in_threadpool(
        request.app.state.engine.generate,
        model.base_model,
        model.adapter_prefix,
        [message.as_plain() for message in body.messages],
        max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        stop=body.stop_list(),
        seed=body.seed,
    )
    return ChatCompletion(
        id=ids.new_id("chatcmpl"),
        created=int(time.time()),
        model=model.id,
        choices=[
            Choice(
                message={"role": "assistant", "content": completion.text},
                finish_reason=completion.finish_reason,
            )
        ],
        usage=Usage(
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
            total_tokens=completion.prompt_tokens + completion.completion_tokens,
        ),
    )
