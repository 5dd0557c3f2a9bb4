"""Every request's duration in `loraport_http_request_duration_seconds`, labelled by the route's template
(`/v1/fine_tuning/jobs/{job_id}`), never its path: one series per id would grow without bound."""

import re
import time
from collections.abc import Callable, Iterable

from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.metrics import HTTP_REQUEST_DURATION

UNMATCHED = "unmatched"  # a path no route takes (its 404), under one label whatever was asked for


class RequestMetrics:
    def __init__(self, app: ASGIApp, templates: Callable[[], Iterable[str]]) -> None:
        """`templates`: the API's path templates (its OpenAPI paths), for requests refused before routing."""
        self.app = app
        self._templates = templates
        self._compiled: list[tuple[re.Pattern[str], str]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets when the app raises before it answers

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            HTTP_REQUEST_DURATION.labels(scope.get("method", ""), self._template(scope), str(status)).observe(
                time.perf_counter() - started
            )

    def _template(self, scope: Scope) -> str:
        """The template of the route that took the request (the router leaves it in the scope); for a request
        refused before routing (a body over its limit), the API's template its path matches."""
        template = getattr(scope.get("route"), "path_format", None)
        if template:
            return str(template)
        if self._compiled is None:
            self._compiled = [(compile_path(each)[0], each) for each in self._templates()]
        path = scope.get("path", "")
        return next((template for pattern, template in self._compiled if pattern.match(path)), UNMATCHED)
