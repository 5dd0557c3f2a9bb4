"""What the engine refuses, in its own words; the API (and a replica, on its wire) says it in HTTP."""

from typing import Any, ClassVar


class EngineError(Exception):
    """A request the engine cannot serve, now or at all."""

    kind: ClassVar[str] = "engine_error"

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after  # seconds after which the same request may succeed

    def wire(self) -> dict[str, Any]:
        """This error as a replica sends it to the API process (`from_wire` reads it back)."""
        return {"kind": self.kind, "message": self.message, "retry_after": self.retry_after}

    @staticmethod
    def from_wire(data: dict[str, Any]) -> "EngineError":
        kinds = {kind.kind: kind for kind in (SlotsBusy, AdapterRankUnsupported, GenerationFailed)}
        return kinds.get(data.get("kind", ""), EngineError)(
            str(data.get("message", "")), retry_after=data.get("retry_after")
        )


class SlotsBusy(EngineError):
    """Every adapter slot holds a pinned adapter or one that running requests use."""

    kind = "slots_busy"


class AdapterRankUnsupported(EngineError):
    """The adapter's LoRA rank is above what this backend serves."""

    kind = "adapter_rank_unsupported"


class GenerationFailed(EngineError):
    """Generating broke on the server (building a cache, a forward pass, sampling, loading an adapter's weights):
    the requests it held fail with this, naming the model, and the engine goes on with the next ones."""

    kind = "generation_failed"

    @classmethod
    def of(cls, model: str | None, error: BaseException, doing: str = "generating") -> "GenerationFailed":
        """`error` (its type and first line) as a message that names the model; `error` stays its cause."""
        detail = ": ".join([type(error).__name__, *str(error).splitlines()[:1]])
        failed = cls(f"{_named(model)} failed while {doing}: {detail}")
        failed.__cause__ = error
        return failed

    @classmethod
    def stopped(cls, model: str | None) -> "GenerationFailed":
        """A request to a batcher that is closed (its decode loop ended)."""
        return cls(f"{_named(model)} is not generating any more here: its decode loop stopped")


def _named(model: str | None) -> str:
    return f"The model '{model}'" if model else "The model"
