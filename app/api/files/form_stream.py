"""Reading a multipart/form-data upload as it arrives: the file part goes to a sink chunk by chunk,
so no upload is ever held whole in memory or spooled to disk first."""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from app.core.errors import InvalidRequest

_MAX_FIELD_BYTES = 64 * 1024
_HANDOFF_BYTES = 1024 * 1024  # batch network chunks before handing them to the (blocking) sink

FileSink = Callable[[bytes], Awaitable[None]]


@dataclass
class StreamedForm:
    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    file_seen: bool = False


@dataclass
class _Part:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    name: str = ""
    is_file: bool = False
    value: bytearray = field(default_factory=bytearray)
    header_field: bytearray = field(default_factory=bytearray)
    header_value: bytearray = field(default_factory=bytearray)


def _boundary(request: Request) -> bytes:
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or b"boundary" not in params:
        raise InvalidRequest("Send the upload as multipart/form-data with the fields 'file' and 'purpose'")
    return params[b"boundary"]


async def stream_form(request: Request, file_field: str, sink: FileSink) -> StreamedForm:
    """Parses the body, passing the bytes of `file_field` to `sink` and collecting the other fields."""
    form = StreamedForm()
    part = _Part()
    pending: list[bytes] = []

    def on_part_begin() -> None:
        nonlocal part
        part = _Part()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        part.header_field += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        part.header_value += data[start:end]

    def on_header_end() -> None:
        part.headers[bytes(part.header_field).lower()] = bytes(part.header_value)
        part.header_field.clear()
        part.header_value.clear()

    def on_headers_finished() -> None:
        _, options = parse_options_header(part.headers.get(b"content-disposition", b""))
        part.name = options.get(b"name", b"").decode("utf-8", "replace")
        part.is_file = part.name == file_field
        if part.is_file:
            if form.file_seen:
                raise InvalidRequest(f"Send exactly one '{file_field}' part", param=file_field)
            form.file_seen = True
            form.filename = options.get(b"filename", b"upload.jsonl").decode("utf-8", "replace")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if part.is_file:
            pending.append(data[start:end])
            return
        part.value += data[start:end]
        if len(part.value) > _MAX_FIELD_BYTES:
            raise InvalidRequest(f"The form field '{part.name}' is too long", param=part.name)

    def on_part_end() -> None:
        if not part.is_file and part.name:
            form.fields[part.name] = part.value.decode("utf-8", "replace")

    parser = MultipartParser(
        _boundary(request),
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )

    async def hand_off(minimum: int) -> None:
        if pending and sum(map(len, pending)) >= minimum:
            data = b"".join(pending)
            pending.clear()
            await sink(data)

    try:
        async for chunk in request.stream():
            parser.write(chunk)
            await hand_off(_HANDOFF_BYTES)
        parser.finalize()
    except MultipartParseError as error:
        raise InvalidRequest(f"The multipart body is malformed: {error}") from None
    await hand_off(1)
    return form
