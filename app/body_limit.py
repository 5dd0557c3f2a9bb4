"""A ceiling on JSON request bodies (chat, completions, jobs, evaluations): they are small, so one of many
megabytes is a mistake or an attack, refused with 413 before it is held in memory. Files stream in as multipart
and are bounded by their own limits (`max_upload_bytes`, `max_line_bytes`)."""

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import PayloadTooLarge, error_body


class JsonBodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope.get("headers", ())) if scope["type"] == "http" else {}
        if b"json" not in headers.get(b"content-type", b""):
            await self.app(scope, receive, send)
            return
        declared = headers.get(b"content-length", b"")
        if declared.isdigit():
            if int(declared) > self.max_bytes:
                await self._refuse(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        # A chunked body that never says its length: read it here, up to the ceiling, then hand it on whole.
        body, more = bytearray(), True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False) and message["type"] == "http.request"
            if len(body) > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Out here no exception handler runs yet: the 413 is answered directly.
        error = PayloadTooLarge(
            f"The JSON body is larger than {self.max_bytes} bytes, the most this server reads; send less",
            code="request_too_large",
        )
        body = error_body(error.message, error.type, None, error.code)
        await JSONResponse(body, status_code=error.status_code)(scope, receive, send)
