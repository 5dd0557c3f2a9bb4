"""What a run needs to continue after a crash exactly as if it had never stopped, taken at the end of an epoch."""

import io
from dataclasses import dataclass, field, fields
from typing import Any

import torch


@dataclass
class TrainingState:
    """Adapter, optimizer, scheduler and RNG state after `epochs_done` epochs, plus the metrics so far.

    The tensors are the live ones (no copies, which for a large model's optimizer would cost hundreds of MB):
    serialize the state before training goes on.
    """

    epochs_done: int
    step: int
    trained_tokens: int
    train_loss: float | None  # mean over the steps of the last finished epoch
    adapter: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: dict[str, Any]
    valid_losses: list[float]
    valid_accuracies: list[float]
    best_epoch: int | None  # 1-based, by validation loss; None without validation examples
    best_adapter: dict[str, torch.Tensor] | None  # the best epoch's adapter when it is not the latest
    train_losses: list[float] = field(default_factory=list)  # mean step loss of each finished epoch

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        torch.save({name.name: getattr(self, name.name) for name in fields(self)}, buffer)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "TrainingState":
        # weights_only: a state file is plain tensors and numbers, and loading must never run pickled code.
        return cls(**torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
