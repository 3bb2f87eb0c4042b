# The chain as a container: `docker compose up` (see docker-compose.yml).
FROM python:3.11-slim
WORKDIR /srv
COPY pyproject.toml README.md ./
COPY http_wasm_asgi ./http_wasm_asgi
RUN pip install --no-cache-dir .
COPY examples ./examples
ENV HTTP_WASM_ASGI_CACHE_DIR=/tmp/http-wasm-asgi-cache
EXPOSE 8080
CMD ["http-wasm-asgi", "serve", "examples/sidecar.yaml", "--host", "0.0.0.0", "--port", "8080"]
