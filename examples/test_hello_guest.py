"""Tests of the hello guest (guests/go/hello, guests/zig/hello.zig), the same for both languages.

Run from the repository's top folder: `pytest examples/test_hello_guest.py`. The `guest_client`
fixture comes with the package (its pytest plugin): no conftest.py needed.
"""

import pytest

GUESTS = {"go": "guests/go/hello/hello.wasm", "zig": "guests/zig/hello.wasm"}


@pytest.fixture(params=sorted(GUESTS))
def hello(request, guest_client):
    """The guest in front of a recording echo app, in-process (server=True: through uvicorn)."""
    return guest_client(GUESTS[request.param], config="pytest")


def test_answers_get_hello_itself(hello):
    result = hello.get("/hello")
    assert result.status == 200
    assert result.headers["content-type"] == "text/plain"
    assert result.text == "hello, pytest\n"
    assert result.app is None  # the app was not called
    assert not result.trapped


def test_tags_every_other_response(hello):
    result = hello.post("/orders?id=7", '{"item": 1}', headers={"content-type": "application/json"})
    assert result.status == 200
    assert result.headers["x-hello"] == "pytest"
    assert result.app.method == "POST"  # what the app saw
    assert result.app.uri == "/orders?id=7"
    assert result.app.headers["content-type"] == "application/json"
    assert result.app.body == b'{"item": 1}'


def test_host_calls(hello):
    result = hello.get("/hello")
    written = result.calls("write_body")  # every host call of the request, decoded
    assert [dict(call.args) for call in written] == [{"kind": "response", "bytes": len("hello, pytest\n")}]
    assert result.calls("get_uri")[0].result == "/hello"
