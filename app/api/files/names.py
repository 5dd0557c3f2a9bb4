"""File names as clients send them, made safe to store and show: the last path component only, no control
characters, at most 255 characters. Storage keys never use them (`app.core.storage.file_key` takes ids), so this is
about what later reaches terminals, logs and Content-Disposition headers."""

import re
import unicodedata

DEFAULT_NAME = "upload.jsonl"
MAX_LENGTH = 255
# Controls, invisible format marks (a bidi override shows `\u202etxt.exe` as `exe.txt`) and the line and paragraph
# separators, which `str.splitlines` and some log viewers break lines at (found by tests/test_upload_names.py).
_NOT_SHOWN = frozenset(("Cc", "Cf", "Zl", "Zp"))


def safe_filename(raw: str) -> str:
    last = re.split(r"[/\\]", raw)[-1]
    visible = "".join(ch for ch in last if unicodedata.category(ch) not in _NOT_SHOWN)
    cleaned = visible.strip().lstrip(".")[:MAX_LENGTH]
    return cleaned or DEFAULT_NAME
