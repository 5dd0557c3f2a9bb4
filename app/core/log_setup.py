"""Structured logs: one line per event with dotted names, tracebacks as plain text without local variables.

structlog's default renders an exception with rich, local variables included: seconds of CPU per traceback on
the API's event loop (one fuzzed request held every other request for minutes) and request data in the log, API
keys among it. Plain tracebacks cost milliseconds and show code, not data.
"""

import sys
from typing import Literal

import structlog

LogFormat = Literal["console", "json"]


def configure_logging(log_format: LogFormat) -> None:
    """`console` for people (colours on a terminal), `json` for log collectors: one object per line."""
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if log_format == "json":
        processors += [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
        processors.append(renderer)
    # Logs go to stderr, so that a command's output on stdout (`loraport compare --json`) stays only its output.
    # Not cached: each call writes to the sys.stderr of the moment (redirected by servers and tests), for microseconds.
    structlog.configure(
        processors=processors,
        logger_factory=lambda *_: structlog.PrintLogger(sys.stderr),
        cache_logger_on_first_use=False,
    )
