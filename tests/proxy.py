"""A TCP proxy in front of a real server, for faults a test cannot get from the server alone.

`hang()` makes the server look hung: every connection stays open and every byte sent is
accepted, but nothing comes back and nothing reaches the server (a black-holed network, a
server stuck on a dead disk). New connections are accepted and hang the same way.
`resume()` lets bytes flow again on connections opened after it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit, urlunsplit


class HangingProxy:
    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.hung = asyncio.Event()
        self.listen_port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.listen_port = self._server.sockets[0].getsockname()[1]

    def hang(self) -> None:
        self.hung.set()

    def resume(self) -> None:
        self.hung.clear()

    def dsn(self, dsn: str) -> str:
        """`dsn` with its host and port replaced by the proxy's."""
        parts = urlsplit(dsn)
        auth = parts.netloc.rpartition("@")[0]
        netloc = f"{auth}@127.0.0.1:{self.listen_port}" if auth else f"127.0.0.1:{self.listen_port}"
        return urlunsplit(parts._replace(netloc=netloc))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for writer in list(self._writers):
            writer.close()
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            if self.hung.is_set():
                await _swallow(reader)
                return
            up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
            self._writers.add(up_writer)
            pumps = [
                asyncio.ensure_future(self._pump(reader, up_writer)),
                asyncio.ensure_future(self._pump(up_reader, writer)),
            ]
            self._tasks.update(pumps)
            await asyncio.gather(*pumps, return_exceptions=True)
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Forward bytes until hung; then swallow what comes, forward nothing."""
        while True:
            data = await reader.read(65536)
            if not data:
                writer.close()
                return
            if self.hung.is_set():
                await _swallow(reader)
                return
            writer.write(data)
            await writer.drain()


async def _swallow(reader: asyncio.StreamReader) -> None:
    while await reader.read(65536):
        pass


@asynccontextmanager
async def hanging_proxy(dsn: str) -> AsyncIterator[HangingProxy]:
    parts = urlsplit(dsn)
    proxy = HangingProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()
