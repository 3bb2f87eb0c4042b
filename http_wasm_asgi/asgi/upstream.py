"""The sidecar's upstream hop: keep-alive HTTP/1.1 connections on asyncio protocols, parsed by httptools.

Chosen on measurements (docs/internals/design-notes.md, "Sidecar"): aiohttp's client cost the sidecar
~55 us of CPU per request on the development machine, this ~10 us. A request is one write (its head,
with the first body chunk when there is one); the response head and, usually, its whole body arrive in
one read, and no task, stream object or timer is made beyond one timer for the wait for the response.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import Callable
from typing import Final

import httptools

# Idle upstream connections are closed after this many seconds: less than the keep-alive of common
# servers (uvicorn and Node 5 s, nginx 75 s), so the upstream rarely closes one just as it is reused.
KEEPALIVE_SECONDS: Final = 4.0
# Response body held for a client that reads slower than the upstream sends: reading pauses above it.
READ_HIGH_WATER: Final = 512 * 1024


class UpstreamFailure(Exception):
    """The exchange with the upstream failed; `name` is the phase the log names, `status` the client's."""

    name = "UpstreamFailure"
    status = 502


class ConnectError(UpstreamFailure):
    name = "ConnectError"


class ConnectTimeout(UpstreamFailure):
    name, status = "ConnectTimeout", 504


class ReadTimeout(UpstreamFailure):
    name, status = "ReadTimeout", 504


class WriteTimeout(UpstreamFailure):
    name, status = "WriteTimeout", 504


class Disconnected(UpstreamFailure):
    """The upstream closed the connection (or sent what is not HTTP) before its response ended."""

    name = "ServerDisconnected"


class Connection(asyncio.Protocol):
    """One connection to the upstream and the one exchange on it at a time.

    The protocol's callbacks record what arrived and wake the one waiter (`wait`), which looks again:
    the response head, body chunks, the end of the message, a resumed write, or the end of the connection.
    """

    def __init__(self, release_dead: Callable[[Connection], None]) -> None:
        self.transport: asyncio.Transport | None = None
        self._release_dead = release_dead
        self._parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_ready = False  # the response's status line and headers are in
        self.complete = False  # the response has ended (its whole body is in `_chunks`)
        self.error: UpstreamFailure | None = None
        self.head_only = False  # the request was HEAD: the response ends with its head
        self.keep = True  # False: the exchange was cut short (the request body not all sent), never reused
        self.idle_since = 0.0
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._reading_paused = False
        self._write_paused = False
        self._waiter: asyncio.Future[None] | None = None

    # -- asyncio.Protocol --
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if not isinstance(exc.__context__, _HeadEnds):
                self._fail(Disconnected(f"the upstream's response could not be handled: {exc.__context__!r}"))
        except httptools.HttpParserError as exc:
            self._fail(Disconnected(f"the upstream sent an invalid response: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.head_ready and not self.complete and exc is None and self._close_delimited():
            self.complete = True  # a body without length or chunks ends where the connection does
        self._fail(Disconnected("the upstream closed the connection" + (f": {exc}" if exc else "")))
        self._release_dead(self)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake()

    def _close_delimited(self) -> bool:
        return not any(k in (b"content-length", b"transfer-encoding") for k, _ in self.headers)

    # -- httptools callbacks --
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:  # an interim response (100 Continue, 103 Early Hints): not the answer
            self.headers = []
            return
        self.status, self.head_ready = status, True
        self._wake()
        if self.head_only:  # a HEAD response has no body, whatever its content-length says
            self.complete = True
            self._parser = httptools.HttpResponseParser(self)  # the next response starts afresh
            raise _HeadEnds

    def on_body(self, body: bytes) -> None:
        if not self.head_ready:
            return
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > READ_HIGH_WATER and not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.head_ready:
            self.complete = True
            self.keep = self.keep and self._parser.should_keep_alive()  # read now: the parser resets after
            self._wake()

    # -- the exchange --
    def start(self, head_only: bool) -> None:
        """Ready for a new exchange on this connection (fresh, or idle in the pool until now)."""
        self.status, self.headers, self.head_ready, self.complete = 0, [], False, False
        self.head_only, self.keep = head_only, True

    @property
    def reusable(self) -> bool:
        """The exchange ended cleanly and both sides keep the connection open."""
        if not self.complete or not self.keep or self.error is not None or self._chunks or self.transport is None \
                or self.transport.is_closing():
            return False
        # a HEAD response's parser stopped at its head: the head says it
        return not self.head_only or not any(k == b"connection" and b"close" in v.lower() for k, v in self.headers)

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    async def drain(self, seconds: float) -> None:
        """Wait until the upstream takes what was written (WriteTimeout), or its response starts."""
        while self._write_paused and not self.head_ready:
            await self.wait(seconds, WriteTimeout)

    async def response_head(self, seconds: float) -> None:
        """Wait for the response's status line and headers (ReadTimeout)."""
        while not self.head_ready:
            await self.wait(seconds, ReadTimeout)

    async def read(self, seconds: float) -> bytes:
        """The response body received so far (waiting up to `seconds` for some); b"" at its end."""
        while not self._chunks:
            if self.complete:
                return b""
            await self.wait(seconds, ReadTimeout)
        chunks = self._chunks
        body = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()
        return body

    @property
    def more(self) -> bool:
        """Whether more of the response body may follow what `read` returned."""
        return not self.complete or bool(self._chunks)

    async def wait(self, seconds: float, timeout: type[UpstreamFailure]) -> None:
        """Until the next event on this connection; its failure, or `timeout` after `seconds`, raise."""
        if self.error is not None:
            raise self.error
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(seconds, _expire, waiter, timeout, seconds)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None
        if self.error is not None:
            raise self.error

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: UpstreamFailure) -> None:
        if not self.complete and self.error is None:
            self.error = error
        self.close()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            if self.error is None:
                waiter.set_result(None)  # a close-delimited body ended
            else:
                waiter.set_exception(self.error)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class _HeadEnds(Exception):
    """Raised in on_headers_complete of a HEAD response: the parser stops there (it would wait for a body)."""


def _expire(waiter: asyncio.Future[None], timeout: type[UpstreamFailure], seconds: float) -> None:
    if not waiter.done():
        waiter.set_exception(timeout(f"nothing from the upstream in {seconds:g} s"))


class Pool:
    """Idle keep-alive connections to one upstream (TCP, TLS or a Unix socket), most recently used first.

    Connections are opened on demand (the caller bounds how many are in use); an idle one is closed after
    KEEPALIVE_SECONDS, or as soon as the upstream closes it.
    """

    def __init__(self, host: str, port: int, *, tls: bool = False, socket_path: str | None = None) -> None:
        self.host, self.port, self.socket_path = host, port, socket_path
        self._ssl = ssl.create_default_context() if tls else None
        self._idle: list[Connection] = []
        self._sweep: asyncio.TimerHandle | None = None
        self.closed = False

    async def acquire(self, connect_seconds: float) -> tuple[Connection, bool]:
        """A connection ready for a new exchange, and whether it was reused (it may have died meanwhile)."""
        idle = self._idle
        while idle:
            connection = idle.pop()
            if connection.error is None:
                return connection, True
        return await self._connect(connect_seconds), False

    async def _connect(self, seconds: float) -> Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(seconds):
                if self.socket_path is not None:
                    _, protocol = await loop.create_unix_connection(lambda: Connection(self._forget), self.socket_path)
                else:
                    _, protocol = await loop.create_connection(lambda: Connection(self._forget), self.host,
                                                               self.port, ssl=self._ssl)
        except TimeoutError:
            raise ConnectTimeout(f"no connection to the upstream in {seconds:g} s") from None
        except OSError as exc:
            raise ConnectError(str(exc) or type(exc).__name__) from None
        return protocol

    def release(self, connection: Connection) -> None:
        """Back to the pool when the exchange ended cleanly; closed otherwise."""
        if self.closed or not connection.reusable:
            connection.close()
            return
        loop = asyncio.get_running_loop()
        connection.idle_since = loop.time()
        self._idle.append(connection)
        if self._sweep is None:
            self._sweep = loop.call_later(KEEPALIVE_SECONDS, self._close_expired)

    def _forget(self, connection: Connection) -> None:
        """The upstream closed a connection: never handed out again."""
        if connection in self._idle:
            self._idle.remove(connection)

    def _close_expired(self) -> None:
        self._sweep = None
        if not self._idle:
            return
        now = asyncio.get_running_loop().time()
        expired = [c for c in self._idle if now - c.idle_since >= KEEPALIVE_SECONDS]
        self._idle = [c for c in self._idle if now - c.idle_since < KEEPALIVE_SECONDS]
        for connection in expired:
            connection.close()
        if self._idle:
            oldest = min(c.idle_since for c in self._idle)
            self._sweep = asyncio.get_running_loop().call_later(oldest + KEEPALIVE_SECONDS - now, self._close_expired)

    def close(self) -> None:
        """Close every idle connection; those in use close when released."""
        self.closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()
