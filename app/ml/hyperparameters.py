"""Resolving `"auto"` hyperparameters into the numbers a job trains with."""

import math
from dataclasses import dataclass
from typing import Literal

Auto = Literal["auto"]

# OpenAI's published rule (fine-tuning cookbook): aim for ~3 epochs, but at least 100 and at most
# 25,000 examples seen in total.
_TARGET_EPOCHS, _MIN_EXAMPLES_SEEN, _MAX_EXAMPLES_SEEN = 3, 100, 25_000
_MIN_EPOCHS, _MAX_EPOCHS = 1, 25


@dataclass(frozen=True)
class Resolved:
    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float

    def as_dict(self) -> dict[str, float | int]:
        return {
            "n_epochs": self.n_epochs,
            "batch_size": self.batch_size,
            "learning_rate_multiplier": self.learning_rate_multiplier,
        }


def auto_epochs(example_count: int) -> int:
    if example_count * _TARGET_EPOCHS < _MIN_EXAMPLES_SEEN:
        return min(_MAX_EPOCHS, _MIN_EXAMPLES_SEEN // example_count)
    if example_count * _TARGET_EPOCHS > _MAX_EXAMPLES_SEEN:
        return max(_MIN_EPOCHS, _MAX_EXAMPLES_SEEN // example_count)
    return _TARGET_EPOCHS


def auto_batch_size(example_count: int) -> int:
    """About 4.5% of the data per batch, between 1 and 16: small data wants more, noisier steps, and on a CPU
    a batch of 8 trains 1.25x the tokens per second of a batch of 4 (bench.seed_recipe, 180 examples)."""
    return max(1, min(16, example_count // 22))


# Base models' learning rates are given for this batch size.
REFERENCE_BATCH_SIZE = 8


def learning_rate(base_learning_rate: float, multiplier: float, batch_size: int) -> float:
    """The peak learning rate: the base model's (at batch size 8) × the multiplier, scaled by √(batch/8), the
    square-root rule for Adam (Malladi et al. 2022): smaller batches take noisier steps and want smaller ones.
    On 10 tickets at batch 1 it gave 50 % exact where the unscaled rate gave 30 % (bench notes, issue 4)."""
    return base_learning_rate * multiplier * math.sqrt(batch_size / REFERENCE_BATCH_SIZE)


def resolve(
    example_count: int, n_epochs: int | Auto, batch_size: int | Auto, learning_rate_multiplier: float | Auto
) -> Resolved:
    return Resolved(
        n_epochs=auto_epochs(example_count) if n_epochs == "auto" else n_epochs,
        batch_size=auto_batch_size(example_count) if batch_size == "auto" else batch_size,
        learning_rate_multiplier=1.0 if learning_rate_multiplier == "auto" else learning_rate_multiplier,
    )
