"""The choices of a completion read their tokens on the event loop as the engine's thread hands them over: an open
stream holds no thread of the pool that sync routes and dependencies (authentication) run in."""

import asyncio
import threading

import anyio.to_thread

from app.api.generation.choices import ChoiceRequest, choice_deltas
from app.serving.backend import GeneratedToken, QueuedTokenStream, SamplingParams
from app.serving.replica import _Generations, _lines


class FakeStream(QueuedTokenStream):
    def cancel(self) -> None:
        self._end()


class FakeEngine:
    """Streams that the test feeds from a thread of its own, as a decode loop would."""

    def __init__(self, tokenizer) -> None:
        self._tokenizer = tokenizer
        self.streams: list[FakeStream] = []

    def tokenizer(self, base_model_id: str):
        return self._tokenizer

    def end_of_turn_ids(self, base_model_id: str) -> set[int]:
        return {self._tokenizer.eos_token_id}

    def stream_tokens(self, base_model_id, adapter_name, prompt_ids, params) -> FakeStream:
        self.streams.append(FakeStream())
        return self.streams[-1]


def test_open_streams_borrow_no_thread_of_the_shared_pool_and_still_get_their_tokens(tokenizer):
    engine = FakeEngine(tokenizer)
    words = tokenizer("hello world", add_special_tokens=False)["input_ids"]

    async def scenario() -> tuple[int, list[str]]:
        request = ChoiceRequest("base", None, [1, 2], SamplingParams(max_tokens=8), stop=[], n=6)
        texts = [""] * request.n

        async def read() -> None:
            async for delta in choice_deltas(engine, request):
                texts[delta.index] += delta.text

        reader = asyncio.create_task(read())
        while len(engine.streams) < request.n:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # every choice is now waiting for its first token
        borrowed = anyio.to_thread.current_default_thread_limiter().borrowed_tokens

        def decode_loop() -> None:  # the engine's thread: tokens, then an end-of-turn token
            for stream in engine.streams:
                for word in words:
                    stream._put(GeneratedToken(word))
                stream._put(GeneratedToken(tokenizer.eos_token_id))

        feeder = threading.Thread(target=decode_loop)
        feeder.start()
        await reader
        feeder.join()
        return borrowed, texts

    borrowed, texts = asyncio.run(scenario())
    assert borrowed == 0
    assert texts == [tokenizer.decode(words)] * 6


def test_a_replica_streams_token_lines_without_a_pool_thread_per_stream():
    streams = [FakeStream() for _ in range(4)]

    async def scenario() -> tuple[int, list[list[str]]]:
        generations = _Generations()
        readers = [asyncio.create_task(collect(_lines(generations.track(stream)))) for stream in streams]
        await asyncio.sleep(0.05)  # every reader is now waiting for its first token
        borrowed = anyio.to_thread.current_default_thread_limiter().borrowed_tokens
        threading.Thread(target=lambda: [(s._put(GeneratedToken(7)), s._end()) for s in streams]).start()
        return borrowed, [await reader for reader in readers]

    async def collect(lines) -> list[str]:
        return [line async for line in lines]

    borrowed, lines = asyncio.run(scenario())
    assert borrowed == 0
    assert lines == [['{"token": 7}\n']] * 4
