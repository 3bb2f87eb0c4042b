"""The sidecar's upstream hop (asgi/upstream.py) against an upstream that answers with exact bytes: the
framings uvicorn never sends (a HEAD with a length, an interim 100, a body ended by closing, garbage).

The front is the guest chain in front of `ProxyApp` on uvicorn; the upstream a socket server in a thread
that reads each request head and writes the response its path names, on the same connection.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from http_wasm_asgi import HttpWasmMiddleware
from http_wasm_asgi.asgi.proxy import ProxyApp
from http_wasm_asgi.testing import serve
from test_proxy import zig

RESPONSES = {
    b"/head": b"HTTP/1.1 200 OK\r\ncontent-length: 1234\r\nx-kind: head\r\n\r\n",  # to a HEAD: no body follows
    b"/interim": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfinal",
    b"/until-close": b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nthe body ends where the connection does",
    b"/garbage": b"this is not HTTP\r\n\r\n",
    b"/chunked": b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
}
CLOSES = (b"/until-close", b"/garbage")


class ScriptedUpstream:
    """Answers each request with RESPONSES[path]; records (connection number, request head, body)."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.seen: list[tuple[int, bytes, bytes]] = []
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                sock, _ = self.listener.accept()
                self.connections += 1
                threading.Thread(target=self._serve, args=(sock, self.connections), daemon=True).start()

    def _serve(self, sock: socket.socket, number: int) -> None:
        buffer = b""
        with sock, contextlib.suppress(OSError):
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = sock.recv(65536)
                    if not data:
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                body, buffer = self._body(sock, head, buffer)
                self.seen.append((number, head, body))
                path = head.split(b" ")[1]
                sock.sendall(RESPONSES[path])
                if path in CLOSES:
                    return

    @staticmethod
    def _body(sock: socket.socket, head: bytes, buffer: bytes) -> tuple[bytes, bytes]:
        """The request body: by its content-length, or chunked up to the last chunk (kept encoded)."""
        lowered = head.lower()
        if b"content-length:" in lowered:
            size = int(lowered.split(b"content-length:")[1].split(b"\r\n")[0])
        elif b"transfer-encoding: chunked" in lowered:
            while not buffer.endswith(b"0\r\n\r\n"):
                buffer += sock.recv(65536)
            return buffer, b""
        else:
            return b"", buffer
        while len(buffer) < size:
            buffer += sock.recv(65536)
        return buffer[:size], buffer[size:]

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def scripted() -> Iterator[ScriptedUpstream]:
    upstream = ScriptedUpstream()
    yield upstream
    upstream.close()


def front(url: str) -> Any:
    return serve(HttpWasmMiddleware(ProxyApp(url), guests=[zig("headeradder", "response x-b 2")]),
                 timeout_graceful_shutdown=2)


def test_a_head_response_ends_with_its_head_and_the_connection_is_reused(scripted: ScriptedUpstream) -> None:
    with front(scripted.url) as url, httpx.Client(base_url=url, timeout=10) as client:
        head = client.head("/head")
        after = client.get("/chunked")
    assert (head.status_code, head.headers["content-length"], head.headers["x-kind"], head.content) == \
        (200, "1234", "head", b"")
    assert (after.status_code, after.text, after.headers["x-b"]) == (200, "abcde", "2")
    assert [number for number, _, _ in scripted.seen] == [1, 1]  # one connection for both


def test_an_interim_response_is_not_the_answer(scripted: ScriptedUpstream) -> None:
    with front(scripted.url) as url:
        r = httpx.get(url + "/interim", timeout=10)
    assert (r.status_code, r.text) == (200, "final")


def test_a_body_ended_by_closing_the_connection_is_whole(scripted: ScriptedUpstream) -> None:
    with front(scripted.url) as url, httpx.Client(base_url=url, timeout=10) as client:
        r = client.get("/until-close")
        again = client.get("/chunked")  # on a new upstream connection: the first one is gone
    assert (r.status_code, r.text) == (200, "the body ends where the connection does")
    assert again.text == "abcde" and scripted.connections == 2


def test_a_response_that_is_not_http_gives_502(scripted: ScriptedUpstream, guest_logs: Any) -> None:
    with front(scripted.url) as url:
        r = httpx.get(url + "/garbage", timeout=10)
    assert (r.status_code, r.text, r.headers["x-b"]) == (502, "Bad Gateway", "2")
    assert any("ServerDisconnected" in m for m in guest_logs.messages)


def test_request_bodies_keep_their_framing(scripted: ScriptedUpstream) -> None:
    def parts() -> Iterator[bytes]:
        yield b"abc"
        yield b"defgh"

    with front(scripted.url) as url, httpx.Client(base_url=url, timeout=10) as client:
        client.post("/chunked", content=b"sized")
        client.post("/chunked", content=parts())  # no length: chunked on both hops
        client.post("/chunked")
    (_, sized_head, sized), (_, chunked_head, chunked), (_, empty_head, empty) = scripted.seen
    assert b"content-length: 5" in sized_head.lower() and sized == b"sized"
    assert b"transfer-encoding: chunked" in chunked_head.lower() and b"content-length" not in chunked_head.lower()
    assert _dechunk(chunked) == b"abcdefgh"  # in as many chunks as the front got it in
    assert b"content-length: 0" in empty_head.lower() and empty == b""


def _dechunk(data: bytes) -> bytes:
    body = b""
    while True:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line, 16)
        if not size:
            assert data == b"\r\n"
            return body
        body, data = body + data[:size], data[size + 2:]
