module http-wasm-asgi/guests

go 1.24
