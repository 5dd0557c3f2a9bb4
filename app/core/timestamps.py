"""OpenAI shows times as integer Unix seconds."""

from datetime import datetime


def unix(moment: datetime | None) -> int | None:
    return int(moment.timestamp()) if moment else None
