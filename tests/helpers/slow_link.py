"""A TCP proxy that slows chosen connections down, for fault tests that must kill a process in the middle of a
transfer that would otherwise take milliseconds."""

import asyncio
import threading

from app.cli.embedded.process import free_ports

_CHUNK = 4096


class SlowLink:
    """Forwards 127.0.0.1:`port` to `target`; once a connection's client has sent `slow_after` (a request line,
    say), what it sends from then on goes at `bytes_per_second`. Other connections go at full speed."""

    def __init__(self, target_port: int, slow_after: bytes, bytes_per_second: int) -> None:
        self.port = free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        self._target_port, self._slow_after, self._rate = target_port, slow_after, bytes_per_second
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="slow-link", daemon=True)

    def __enter__(self) -> "SlowLink":
        self._thread.start()
        self._started.wait(10)
        return self

    def __exit__(self, *_: object) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._connection, "127.0.0.1", self.port))
        self._started.set()
        self._loop.run_forever()

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in asyncio.all_tasks() - {asyncio.current_task()}:
            task.cancel()

    async def _connection(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self._target_port)
        await asyncio.gather(
            self._pipe(client_reader, server_writer, throttle=True),
            self._pipe(server_reader, client_writer, throttle=False),
            return_exceptions=True,
        )

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, throttle: bool) -> None:
        seen, slow = b"", False
        try:
            while chunk := await reader.read(_CHUNK):
                if throttle and not slow:
                    seen = (seen + chunk)[-(len(self._slow_after) + _CHUNK) :]
                    slow = self._slow_after in seen
                if slow:
                    await asyncio.sleep(len(chunk) / self._rate)
                writer.write(chunk)
                await writer.drain()
        except ConnectionError:
            pass  # the other end went away (a killed worker): so does this connection
        finally:
            writer.close()
