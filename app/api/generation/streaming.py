"""What the chat and completions endpoints share: limits, admission, timeouts and Server-Sent Events."""

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import structlog
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from app.api.generation.admission import Ticket
from app.api.generation.engine_errors import http_error
from app.core.errors import GenerationTimeout, InvalidRequest, LoraportError
from app.core.settings import Settings
from app.serving.errors import EngineError

log = structlog.get_logger()
DEFAULT_MAX_TOKENS = 256
T = TypeVar("T")


def checked_limits(settings: Settings, max_tokens: int | None, n: int) -> int:
    """The number of tokens to generate per choice, after checking both against the server's limits."""
    tokens = max_tokens or DEFAULT_MAX_TOKENS
    if tokens > settings.max_new_tokens_limit:
        raise InvalidRequest(
            f"max_tokens is {tokens}; the most this server generates is {settings.max_new_tokens_limit}",
            param="max_tokens",
        )
    if n > settings.max_choices:
        raise InvalidRequest(f"n is {n}; at most {settings.max_choices} choices per request", param="n")
    return tokens


async def within_timeout(settings: Settings, ticket: Ticket, work: Awaitable[T], ended: Callable[[], None]) -> T:
    """`work`'s result; past the request timeout its generation is cancelled and the client gets a 504. `ended`
    runs once the work is over, whatever its outcome (the request's usage is counted there)."""
    try:
        async with asyncio.timeout(settings.inference_timeout_seconds):
            return await work
    except TimeoutError:
        raise GenerationTimeout(
            f"The completion took longer than {settings.inference_timeout_seconds:g} s; ask for fewer tokens"
        ) from None
    finally:
        ticket.release()
        ended()


def event_stream(
    settings: Settings, ticket: Ticket, chunks: AsyncIterator[dict], ended: Callable[[], None]
) -> StreamingResponse:
    """`data: {chunk}` events, then `data: [DONE]`; an error after the first byte is sent as an error chunk.
    `ended` runs once the stream is over, also when its client left (the request's usage is counted there).

    A client that disconnects cancels this generator, which cancels the generation and frees its place.
    """

    async def events() -> AsyncIterator[str]:
        try:
            async with asyncio.timeout(settings.inference_timeout_seconds):
                async for chunk in chunks:
                    yield _event(chunk)
            yield "data: [DONE]\n\n"
        except TimeoutError:
            message = f"The completion took longer than {settings.inference_timeout_seconds:g} s"
            yield _event(GenerationTimeout(message).body())
        except LoraportError as error:
            yield _event(error.body())
        except EngineError as error:
            yield _event(http_error(error).body())
        except Exception:
            log.exception("inference.stream_failed")
            message = "The server hit an error while generating; retry, and report it if it persists."
            yield _event({"error": {"message": message, "type": "server_error", "param": None, "code": None}})
        finally:
            ticket.release()
            ended()

    # The background task frees the place even when the client left before the stream began.
    return StreamingResponse(
        events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"},
        background=BackgroundTask(ticket.release),
    )  # fmt: skip


@dataclass(frozen=True)
class ChunkEnvelope:
    """What every stream chunk of one completion repeats: its id, object type, time and model, and the `usage`
    key (null until the last chunk) when the client asked for `stream_options.include_usage`."""

    object: str
    id: str
    created: int
    model: str
    include_usage: bool

    def wrap(self, choices: list[dict]) -> dict:
        chunk = {"id": self.id, "object": self.object, "created": self.created, "model": self.model}
        chunk |= {"system_fingerprint": None, "choices": choices}
        return chunk | {"usage": None} if self.include_usage else chunk

    def usage(self, usage: dict) -> dict:
        """The last chunk: no choices, the request's usage."""
        return self.wrap([]) | {"usage": usage}


def _event(data: dict) -> str:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"
