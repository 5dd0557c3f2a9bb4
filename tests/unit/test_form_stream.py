"""Reading an upload's form as it streams: the file part goes to the sink, only the fields the route names are kept,
and everything else in the form is capped in bytes and in parts."""

import asyncio

import pytest
from starlette.requests import Request
from starlette.types import Message

from app.api.files.form_stream import MAX_FORM_BYTES, MAX_FORM_PARTS, StreamedForm, stream_form
from app.core.errors import InvalidRequest, PayloadTooLarge

BOUNDARY = "test-boundary"


def _form(*parts: tuple[str, bytes], epilogue: bytes = b"") -> bytes:
    body = b"".join(
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"'.encode()
        + (b'; filename="t.jsonl"' if name == "file" else b"")
        + b"\r\n\r\n"
        + value
        + b"\r\n"
        for name, value in parts
    )
    return body + f"--{BOUNDARY}--\r\n".encode() + epilogue


def _read(body: bytes, fields: tuple[str, ...] = ("purpose",)) -> tuple[StreamedForm, bytes]:
    chunks = [body[i : i + 4096] for i in range(0, len(body), 4096)] or [b""]

    async def receive() -> Message:
        chunk = chunks.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/files",
        "headers": [(b"content-type", f"multipart/form-data; boundary={BOUNDARY}".encode())],
    }
    received = bytearray()

    async def sink(data: bytes) -> None:
        received.extend(data)

    form = asyncio.run(stream_form(Request(scope, receive), "file", sink, fields=fields))
    return form, bytes(received)


def test_the_file_goes_to_the_sink_and_only_the_named_fields_are_kept() -> None:
    form, file = _read(_form(("purpose", b"fine-tune"), ("other", b"x" * 1000), ("file", b"{}\n")))

    assert form.fields == {"purpose": "fine-tune"}
    assert form.file_seen and file == b"{}\n"


def test_fields_past_the_byte_cap_are_refused_naming_it() -> None:
    fields = [(f"f{i}", b"x" * 6000) for i in range(12)]  # fewer parts than the cap, more bytes

    with pytest.raises(PayloadTooLarge) as refused:
        _read(_form(("purpose", b"fine-tune"), *fields, ("file", b"{}\n")))

    assert refused.value.code == "form_too_large" and str(MAX_FORM_BYTES) in refused.value.message


def test_more_parts_than_the_cap_are_refused_naming_it() -> None:
    fields = [(f"f{i}", b"x") for i in range(MAX_FORM_PARTS)]

    with pytest.raises(InvalidRequest) as refused:
        _read(_form(("purpose", b"fine-tune"), *fields, ("file", b"{}\n")))

    assert refused.value.code == "too_many_form_parts" and str(MAX_FORM_PARTS) in refused.value.message


def test_part_headers_count_against_the_cap() -> None:
    # The parser bounds each part's headers itself; many parts with long headers are what is left to cap.
    padded = b"\r\nX-Padding: " + b"y" * 4150
    body = _form(("purpose", b"fine-tune"), *[(f"f{i}", b"") for i in range(14)], ("file", b"{}\n"))
    body = body.replace(b'"\r\n\r\n', b'"' + padded + b"\r\n\r\n")

    with pytest.raises(PayloadTooLarge):
        _read(body)


def test_an_epilogue_after_the_last_boundary_counts_against_the_cap() -> None:
    with pytest.raises(PayloadTooLarge):
        _read(_form(("purpose", b"fine-tune"), ("file", b"{}\n"), epilogue=b"z" * 2 * MAX_FORM_BYTES))
