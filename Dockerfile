# The chain as a container image (used by docker-compose.yml): `docker compose up --build`.
# Two stages: the wheel (with the native path compiled in) is built where a C compiler is; the image that
# runs holds only the installed wheels, runs as an unprivileged user, and its build fails if the native
# path is off.
FROM python:3.11 AS build
WORKDIR /src
COPY pyproject.toml setup.py README.md LICENSE ./
COPY http_wasm_asgi ./http_wasm_asgi
# The package's wheel and every dependency's (the command's `standard` extra, Starlette for the example apps).
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[standard,examples]"

FROM python:3.11-slim
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels "http-wasm-asgi[standard,examples]" \
    && rm -rf /wheels \
    && python -c "from http_wasm_asgi import _native; assert _native.EXT is not None, _native.OFF_REASON" \
    && useradd --system --uid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin chain \
    && install -d -o 10001 -g 10001 -m 0700 /var/cache/http-wasm-asgi
WORKDIR /srv
# What the example configs use: the compiled example guests and the example apps and configs.
COPY guests/zig/*.wasm ./guests/zig/
COPY examples ./examples
# The compile cache (a volume: an emptyDir in Kubernetes, where the root filesystem is read-only).
ENV HTTP_WASM_ASGI_CACHE_DIR=/var/cache/http-wasm-asgi
ENV PYTHONDONTWRITEBYTECODE=1
VOLUME /var/cache/http-wasm-asgi
USER 10001:10001
EXPOSE 8080
CMD ["http-wasm-asgi", "serve", "examples/sidecar.yaml", "--host", "0.0.0.0", "--port", "8080"]
