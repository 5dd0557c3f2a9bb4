"""Dataset formats, streaming validation with line-numbered errors, and the data report."""

from app.datasets.formats import CHAT, PREFERENCE, PROMPT_COMPLETION, PROMPTS
from app.datasets.lines import LineSplitter
from app.datasets.report import DatasetProfiler, leakage
from app.datasets.results import Example, LineError, ValidationResult
from app.datasets.tokens import token_stats
from app.datasets.validation import DatasetValidator

__all__ = [
    "CHAT",
    "PREFERENCE",
    "PROMPTS",
    "PROMPT_COMPLETION",
    "DatasetProfiler",
    "DatasetValidator",
    "Example",
    "LineError",
    "LineSplitter",
    "ValidationResult",
    "leakage",
    "token_stats",
]
