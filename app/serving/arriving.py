"""A `TokenStream` read on an event loop: the producing thread (a decode loop, an HTTP reader) signals each
arrival, and the loop takes what is there. Reading with `run_in_threadpool(next, …)` instead held one thread of
the shared pool per open stream while it waited, the pool that sync routes and dependencies (authentication)
need: a slowed batch with many streams open starved them."""

import asyncio
import contextlib
from collections.abc import AsyncIterator

from app.serving.backend import GeneratedToken, TokenStream


async def arriving(tokens: TokenStream) -> AsyncIterator[GeneratedToken]:
    """The stream's tokens as they come; the stream's error, if any, is raised here."""
    arrived = asyncio.Event()
    loop = asyncio.get_running_loop()

    def signal() -> None:  # called by the producing thread
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody reads any more
            loop.call_soon_threadsafe(arrived.set)

    tokens.on_item(signal)
    while True:
        arrived.clear()  # before polling: an item that comes after the poll sets it again
        try:
            token = tokens.poll()
        except StopIteration:
            return
        if token is None:
            await arrived.wait()
        else:
            yield token
