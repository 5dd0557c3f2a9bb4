"""What a job's end-of-job evaluation does, as the job stored it (the API's `evaluation` extension object)."""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

# Whether the published model is trained again on every example, held-out ones included, once the held-out split has
# chosen its epochs: "auto" does so where the held-out share is big enough to cost the model (`worker.fine_tune`).
Refit = bool | Literal["auto"]
# "auto" refits while the held-out examples are at least this share of all: above it the split costs the published
# model examples it would learn from; below it (large sets, whose held-out share is capped) the model loses almost
# nothing and the job would take twice as long.
REFIT_MIN_HELD_OUT_SHARE = 0.08


@dataclass(frozen=True)
class EvaluationSettings:
    max_examples: int = 50  # held-out examples answered; 0: no evaluation
    max_tokens: int = 256  # the longest answer generated
    checkpoints: bool = True  # also list the latest 3 epochs' checkpoints with their held-out loss and accuracy
    refit: Refit = "auto"

    @classmethod
    def stored(cls, values: Mapping[str, Any] | None) -> "EvaluationSettings":
        return cls(**(values or {}))
