"""Dataset formats, streaming validation with line-numbered errors, and the data report. Token counts
(`app.ml.datasets.tokens`) need a tokenizer, so they are not imported here: the CLI reads datasets without
transformers."""

from app.ml.datasets.formats import CHAT, PREFERENCE, PROMPT_COMPLETION, PROMPTS
from app.ml.datasets.lines import LineSplitter
from app.ml.datasets.report import DatasetProfiler, leakage
from app.ml.datasets.results import Example, LineError, ValidationResult
from app.ml.datasets.validation import DatasetValidator

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
]
