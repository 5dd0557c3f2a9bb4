"""What the API needs from an inference backend, whichever one runs the model: the built-in torch engine in this
process (`InferenceEngine`), replicas over HTTP, or vLLM on GPU hosts. `LORAPORT_INFERENCE_BACKEND` and
`LORAPORT_INFERENCE_REPLICAS` choose one."""

import queue
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None
    logprobs: int | None = None  # None: none; k: each token's log-probability and the k most likely alternatives
    organization: str | None = None  # whose request: the built-in engine shares its batch fairly between them


@dataclass(frozen=True, slots=True)
class GeneratedToken:
    """One generated token; with `SamplingParams.logprobs`, its log-probability under the model (before temperature
    and top-p, as OpenAI reports them) and the most likely tokens at its position, best first."""

    id: int
    logprob: float | None = None
    top_logprobs: tuple[tuple[int, float], ...] = ()


class TokenStream(Iterator[GeneratedToken], Protocol):
    """Generated tokens as they come, an end-of-turn token last when the model stopped by itself.

    Iterating blocks until the next token and raises the backend's error, if any. `cancel()` (a stop sequence
    was met, or the client went away) frees the generation's place at once.
    """

    def cancel(self) -> None: ...

    def poll(self) -> GeneratedToken | None:
        """The next token if one is there (None: none yet), without blocking; StopIteration or the error at the end."""
        ...

    def on_item(self, callback: Callable[[], None]) -> None:
        """Call `callback` (from the producing thread) whenever a token, the end or an error arrives, and once now.

        An event loop reads with `poll` when called back, so no thread waits for tokens on its behalf."""
        ...


class QueuedTokenStream(Iterator[GeneratedToken]):
    """A `TokenStream` fed from another thread (a decode loop, an HTTP reader, an event loop) through a queue:
    tokens, then the end or one error, which the reader gets raised once."""

    def __init__(self) -> None:
        self._items: queue.SimpleQueue[GeneratedToken | BaseException | None] = queue.SimpleQueue()  # None: the end
        self._ended = False
        self._listener: Callable[[], None] | None = None

    def __next__(self) -> GeneratedToken:
        if self._ended:
            raise StopIteration
        return self._taken(self._items.get())

    def poll(self) -> GeneratedToken | None:
        if self._ended:
            raise StopIteration
        try:
            item = self._items.get_nowait()
        except queue.Empty:
            return None
        return self._taken(item)

    def on_item(self, callback: Callable[[], None]) -> None:
        self._listener = callback
        callback()

    def _taken(self, item: GeneratedToken | BaseException | None) -> GeneratedToken:
        if isinstance(item, GeneratedToken):
            return item
        self._ended = True
        if item is None:
            raise StopIteration
        raise item

    def _put(self, token: GeneratedToken) -> None:
        self._items.put(token)
        self._notify_listener()

    def _end(self) -> None:
        self._items.put(None)
        self._notify_listener()

    def _fail(self, error: BaseException) -> None:
        self._items.put(error)
        self._notify_listener()

    def _notify_listener(self) -> None:
        if (listener := self._listener) is not None:
            listener()


class InferenceBackend(Protocol):
    def tokenizer(self, base_model_id: str) -> PreTrainedTokenizerBase: ...

    def end_of_turn_ids(self, base_model_id: str) -> set[int]: ...

    def stream_tokens(
        self, base_model_id: str, adapter_name: str | None, prompt_ids: list[int], params: SamplingParams
    ) -> TokenStream:
        """Start generating; `adapter_name` is the adapter's storage prefix (None: the base model)."""
        ...

    def warm(self, base_model_id: str, adapter_name: str) -> None:
        """Fetch the adapter's files (and load it where its base model is in memory) before its first request."""
        ...

    def evict(self, adapter_name: str) -> None:
        """Forget a deleted adapter: it leaves memory and the local disk cache."""
        ...
