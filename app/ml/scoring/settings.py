"""What a job's end-of-job evaluation does, as the job stored it (the API's `evaluation` extension object)."""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class EvaluationSettings:
    max_examples: int = 50  # held-out examples answered; 0: no evaluation
    max_tokens: int = 256  # the longest answer generated
    checkpoints: bool = True  # also evaluate the latest 3 epochs' checkpoints

    @classmethod
    def stored(cls, values: Mapping[str, Any] | None) -> "EvaluationSettings":
        return cls(**(values or {}))
