"""examples/chain.yaml as an ASGI app object, for any ASGI server (README, "ASGI servers").

From the repository's top folder:

    uvicorn examples.chain_app:app --port 8080
    hypercorn examples.chain_app:app --bind 127.0.0.1:8080
    granian --interface asgi examples.chain_app:app --port 8080
    daphne -p 8080 examples.chain_app:app
"""

from __future__ import annotations

from pathlib import Path

from http_wasm_asgi import HttpWasmMiddleware

app = HttpWasmMiddleware.from_config(Path(__file__).with_name("chain.yaml"))
