"""File names as clients send them, made safe to store and show: the last path component only, no control
characters, at most 255 characters. Storage keys never use them (`app.storage.file_key` takes ids), so this is
about what later reaches terminals, logs and Content-Disposition headers."""

import re
import unicodedata

DEFAULT_NAME = "upload.jsonl"
MAX_LENGTH = 255


def safe_filename(raw: str) -> str:
    last = re.split(r"[/\\]", raw)[-1]
    visible = "".join(ch for ch in last if unicodedata.category(ch) not in ("Cc", "Cf"))
    cleaned = visible.strip().lstrip(".")[:MAX_LENGTH]
    return cleaned or DEFAULT_NAME
