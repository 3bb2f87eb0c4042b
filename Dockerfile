# The chain as a container image (used by docker-compose.yml): `docker compose up --build`.
FROM python:3.11-slim
WORKDIR /srv
# The package: `pip install .` needs its metadata, setup.py (the native path, in C: built
# when a compiler is present, skipped otherwise) and the sources.
COPY pyproject.toml setup.py README.md ./
COPY http_wasm_asgi ./http_wasm_asgi
# With the extras serve --metrics-port (probes, scrapes) and --reload need, and Starlette for the example apps.
RUN pip install --no-cache-dir ".[standard,examples]"
# What the example configs use: the compiled example guests and the example apps and configs.
COPY guests/zig/*.wasm ./guests/zig/
COPY examples ./examples
ENV HTTP_WASM_ASGI_CACHE_DIR=/tmp/http-wasm-asgi-cache
EXPOSE 8080
CMD ["http-wasm-asgi", "serve", "examples/sidecar.yaml", "--host", "0.0.0.0", "--port", "8080"]
