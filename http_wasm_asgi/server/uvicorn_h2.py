"""`serve --http2` on uvicorn: its zttp protocol (HTTP/2 by ALPN over TLS or by prior knowledge in the clear,
HTTP/1.1 otherwise), with one fix.

uvicorn 0.54's HTTP/2 stream handler waits for zttp's `EndOfMessage` to end a request body, but zttp
(0.0.22 and later) ends a request without a body on its `Request` event (`end_stream`) and sends no
`EndOfMessage`: an app's (or a guest's) `receive()` on a GET then waits until the client gives up.
`HttpProtocol` ends such a request's body at once. uvicorn picks it as `Config(http=PROTOCOL)`; without
uvicorn's zttp modules (another uvicorn), `serve` falls back to `http="zttp", http2=True`.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

from uvicorn.protocols.http.auto_zttp_impl import AutoZttpProtocol
from uvicorn.protocols.http.zttp_h2_impl import ZttpH2Protocol
from uvicorn.protocols.http.zttp_impl import ZttpProtocol

PROTOCOL: Final = f"{__name__}:HttpProtocol"  # an import string: the workers of --workers N load it too


class _H2Protocol(ZttpH2Protocol):
    def handle_request(self, event: Any) -> None:
        super().handle_request(event)
        cycle = self.cycles.get(event.stream_id)
        if getattr(event, "end_stream", False) and cycle is not None:
            cycle.more_body = False
            cycle.message_event.set()


class HttpProtocol(AutoZttpProtocol):
    """uvicorn's AutoZttpProtocol (HTTP/2 or HTTP/1.1 per connection), its HTTP/2 side fixed."""

    def _switch(self, http2: bool, initial_data: bytes = b"") -> None:
        protocol_class: type[asyncio.Protocol] = _H2Protocol if http2 else ZttpProtocol
        protocol = protocol_class(config=self.config, server_state=self.server_state,  # type: ignore[call-arg]
                                  app_state=self.app_state, _loop=self.loop)
        self.transport.set_protocol(protocol)
        protocol.connection_made(self.transport)
        if initial_data:
            protocol.data_received(initial_data)
