"""Ceilings on JSON request bodies (chat, completions, jobs, evaluations): they are small and shallow, so one of
many megabytes is a mistake or an attack, refused with 413 before it is held in memory, and one nested deeper than
`max_depth` is refused with 400 before the parser recurses into it (Python's would raise RecursionError near 1000
levels, and code walking the parsed value recursively sooner). Files stream in as multipart and are bounded by their
own limits (`max_upload_bytes`, `max_line_bytes`, and the same depth per line)."""

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.errors import InvalidRequest, LoraportError, PayloadTooLarge
from app.core.json_depth import nests_deeper_than


class JsonBodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int, max_depth: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_depth = max_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope.get("headers", ())) if scope["type"] == "http" else {}
        if not _is_json(headers.get(b"content-type", b"")):
            await self.app(scope, receive, send)
            return
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(self._too_large(), scope, receive, send)
            return
        # The body is read here, up to the ceiling (a chunked one never says its length), then handed on whole:
        # the route would hold it whole to parse it anyway.
        chunks: list[bytes] = []
        received, more = 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # nobody is left to answer
            chunks.append(message.get("body", b""))
            received += len(chunks[-1])
            more = message.get("more_body", False)
            if received > self.max_bytes:
                await self._refuse(self._too_large(), scope, receive, send)
                return
        body = b"".join(chunks)
        if nests_deeper_than(_as_utf8(body), self.max_depth):
            await self._refuse(self._too_deep(), scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    def _too_large(self) -> LoraportError:
        return PayloadTooLarge(
            f"The JSON body is larger than {self.max_bytes} bytes, the most this server reads; send less",
            code="request_too_large",
        )

    def _too_deep(self) -> LoraportError:
        return InvalidRequest(
            f"The JSON body has arrays or objects nested more than {self.max_depth} levels deep, the most this "
            "server reads; flatten it",
            code="json_too_deep",
        )

    async def _refuse(self, error: LoraportError, scope: Scope, receive: Receive, send: Send) -> None:
        # Out here no exception handler runs yet: the error is answered directly.
        await error.response()(scope, receive, send)


def _is_json(content_type: bytes) -> bool:
    """Whether the route will parse the body as JSON: FastAPI's own test, so that `Application/JSON` is bounded too
    and a multipart upload whose boundary happens to hold "json" is not."""
    media_type = content_type.partition(b";")[0].strip().lower()
    return media_type.startswith(b"application/") and media_type.endswith((b"/json", b"+json"))


def _as_utf8(body: bytes) -> bytes:
    """The body as UTF-8, the encoding the depth count reads; the route's parser also takes UTF-16 and UTF-32."""
    encoding = json.detect_encoding(body)
    return body if encoding.startswith("utf-8") else body.decode(encoding, "replace").encode()
