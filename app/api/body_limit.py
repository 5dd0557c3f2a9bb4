"""Ceilings on request bodies, applied before any route or authentication reads one.

FastAPI reads a route's whole body before it resolves the route's dependencies, authentication included, and a
body that is not JSON is refused only after that: an unauthenticated 8 GiB `text/plain` POST would be held in memory
whole before its 401. So every body is read here, whatever its content type, up to `max_bytes` (a declared
Content-Length over it is refused with 0 bytes read), and one larger is a 413. The bodies the API parses are small
(chat, completions, jobs, evaluations, keys, the dashboard's login form), so one of many megabytes is a mistake or an
attack. A JSON body nested deeper than `max_depth` is refused with 400 before the parser recurses into it (Python's
would raise RecursionError near 1000 levels, and code walking the parsed value recursively sooner).

Only the multipart uploads (`streamed`: `POST /v1/files`, `POST /v1/uploads/{id}/parts`) pass untouched: their routes
authenticate before reading, stream the file part to storage and bound it by their own limits (`max_upload_bytes`,
`max_line_bytes`, the same depth per line, and a cap on the form's other fields). Any other body sent to them, or a
multipart body sent elsewhere, is bounded like the rest."""

import json
import re
from collections.abc import Sequence

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.errors import InvalidRequest, LoraportError, PayloadTooLarge
from app.core.json_depth import nests_deeper_than


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int, max_depth: int, streamed: Sequence[str] = ()) -> None:
        """`streamed`: regular expressions of the paths whose POSTed multipart bodies their routes stream."""
        self.app = app
        self.max_bytes = max_bytes
        self.max_depth = max_depth
        self.streamed = [re.compile(path) for path in streamed]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", ()))
        content_type = headers.get(b"content-type", b"")
        if self._streams(scope, content_type):
            await self.app(scope, receive, send)
            return
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse_unread(scope, receive, send)
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
                await self._refuse_unread(scope, receive, send)
                return
        body = b"".join(chunks)
        if _is_json(content_type) and nests_deeper_than(_as_utf8(body), self.max_depth):
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

    def _streams(self, scope: Scope, content_type: bytes) -> bool:
        """Whether this is a multipart upload that its route streams under its own limits."""
        if scope.get("method") != "POST" or _media_type(content_type) != b"multipart/form-data":
            return False
        return any(path.fullmatch(scope.get("path", "")) for path in self.streamed)

    async def _refuse_unread(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A 413 that closes the connection: the rest of the body is never read, so the client stops sending it
        (a kept-alive connection would have the server read and discard it all)."""
        error = PayloadTooLarge(
            f"The request body is larger than {self.max_bytes} bytes, the most this server reads here; send less "
            "(datasets go to /v1/files or /v1/uploads as multipart/form-data)",
            code="request_too_large",
        )
        error.count_refusal()
        response = error.response()
        response.headers["Connection"] = "close"
        await response(scope, receive, send)

    def _too_deep(self) -> LoraportError:
        return InvalidRequest(
            f"The JSON body has arrays or objects nested more than {self.max_depth} levels deep, the most this "
            "server reads; flatten it",
            code="json_too_deep",
        )

    async def _refuse(self, error: LoraportError, scope: Scope, receive: Receive, send: Send) -> None:
        # Out here no exception handler runs yet: the error is answered directly.
        await error.response()(scope, receive, send)


def _media_type(content_type: bytes) -> bytes:
    return content_type.partition(b";")[0].strip().lower()


def _is_json(content_type: bytes) -> bool:
    """Whether the route will parse the body as JSON: FastAPI's own test, so that `Application/JSON` is checked too
    and a multipart upload whose boundary happens to hold "json" is not."""
    media_type = _media_type(content_type)
    return media_type.startswith(b"application/") and media_type.endswith((b"/json", b"+json"))


def _as_utf8(body: bytes) -> bytes:
    """The body as UTF-8, the encoding the depth count reads; the route's parser also takes UTF-16 and UTF-32."""
    encoding = json.detect_encoding(body)
    return body if encoding.startswith("utf-8") else body.decode(encoding, "replace").encode()
