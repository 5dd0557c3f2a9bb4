"""How the dashboard's templates show values: ages, the evaluation report's measures, held-out prompts."""

from datetime import UTC, datetime


def age(moment: datetime | int) -> str:
    """How long ago a time (or a Unix timestamp) was, as people say it: "5 min ago"."""
    when = datetime.fromtimestamp(moment, UTC) if isinstance(moment, int) else moment
    seconds = int((datetime.now(UTC) - when).total_seconds())
    for unit, size in (("d", 86_400), ("h", 3_600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return "just now"


_SHARES = {"exact", "format_kept", "field_accuracy", "token_accuracy", "preference_accuracy"}


def measure(value: object, name: str) -> str:
    """A number of the evaluation report as people read it: shares in per cent."""
    if not isinstance(value, int | float):
        return "–"
    return f"{100 * value:.0f} %" if name in _SHARES else f"{value:.4g}"


def prompt_text(prompt: object) -> str:
    """A held-out prompt (text, or chat messages) as the text the user wrote."""
    if isinstance(prompt, list):
        return "\n".join(str(m.get("content", "")) for m in prompt if isinstance(m, dict) and m.get("role") == "user")
    return str(prompt)


def utc_day(unix_time: int) -> str:
    return datetime.fromtimestamp(unix_time, UTC).strftime("%Y-%m-%d")


def size(count: int) -> str:
    """Bytes as people read them: "1.5 MB" (powers of 1000)."""
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if abs(count) >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} B"
