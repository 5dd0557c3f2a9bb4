"""Reading a multipart/form-data upload as it arrives: the file part goes to a sink chunk by chunk,
so no upload is ever held whole in memory or spooled to disk first.

Everything else in the form is small: the route's few fields (`purpose`) and each part's headers. Only the fields the
route names are kept, and all of it together is capped (`MAX_FORM_BYTES`, `MAX_FORM_PARTS`), so that a form of
thousands of fields, or of one endless header, is refused rather than held (the file part is bounded by the sink).
"""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from app.core.errors import InvalidRequest, PayloadTooLarge

MAX_FORM_BYTES = 64 * 1024  # the parts' headers and every field but the file, together
MAX_FORM_PARTS = 16  # OpenAI's SDK sends `file`, `purpose` and at most a few optional fields
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


async def stream_form(request: Request, file_field: str, sink: FileSink, fields: tuple[str, ...] = ()) -> StreamedForm:
    """Parses the body, passing the bytes of `file_field` to `sink` and keeping the `fields` the route reads; other
    parts are read past and dropped."""
    form = StreamedForm()
    part = _Part()
    pending: list[bytes] = []
    parts = small_bytes = 0
    ended = False  # past the closing boundary, where the parser skips whatever else comes

    def count(size: int) -> None:
        nonlocal small_bytes
        small_bytes += size
        if small_bytes > MAX_FORM_BYTES:
            raise PayloadTooLarge(
                f"The form's fields and part headers, all but the '{file_field}' part's content, are larger than "
                f"{MAX_FORM_BYTES} bytes, the most this server reads; send only '{file_field}'"
                + "".join(f" and '{name}'" for name in fields),
                code="form_too_large",
            )

    def on_part_begin() -> None:
        nonlocal part, parts
        part = _Part()
        parts += 1
        if parts > MAX_FORM_PARTS:
            raise InvalidRequest(
                f"The form has more than {MAX_FORM_PARTS} parts, the most this server reads; send only "
                f"'{file_field}'" + "".join(f" and '{name}'" for name in fields),
                code="too_many_form_parts",
            )

    def on_header_field(data: bytes, start: int, end: int) -> None:
        count(end - start)
        part.header_field += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        count(end - start)
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
        count(end - start)
        if part.name in fields:
            part.value += data[start:end]

    def on_part_end() -> None:
        if part.name in fields:
            form.fields[part.name] = part.value.decode("utf-8", "replace")

    def on_end() -> None:
        nonlocal ended
        ended = True

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
            "on_end": on_end,
        },
    )

    async def hand_off(minimum: int) -> None:
        if pending and sum(map(len, pending)) >= minimum:
            data = b"".join(pending)
            pending.clear()
            await sink(data)

    try:
        async for chunk in request.stream():
            if ended:
                count(len(chunk))
            parser.write(chunk)
            await hand_off(_HANDOFF_BYTES)
        parser.finalize()
    except MultipartParseError as error:
        raise InvalidRequest(f"The multipart body is malformed: {error}") from None
    await hand_off(1)
    return form
