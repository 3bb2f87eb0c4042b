"""The ASGI binding: `HttpWasmMiddleware` (`middleware`), a chain and one request's way through it (`flow`),
per-route chains (`routes`), the sidecar's proxy app (`proxy`), ASGI types (`types`)."""
