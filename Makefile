# Two entry points: `make demo` (example app behind a guest chain on uvicorn) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test install system-deps guests check-guests guest-toolchains lint bench

$(BIN)/http-wasm-asgi: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,guests,examples]'
	touch $@

install: $(BIN)/http-wasm-asgi

demo: install
	$(BIN)/http-wasm-asgi serve examples/chain.yaml

guests: install guest-toolchains
	$(BIN)/python guests/build.py

check-guests: install guest-toolchains
	$(BIN)/python guests/build.py --check

# Guest toolchains beyond the pip ones (Go, Zig, C via zig cc): Rust from Debian (system-deps) and
# AssemblyScript from npm, pinned by guests/assemblyscript/package-lock.json.
AS_DIR := guests/assemblyscript

guest-toolchains: system-deps $(AS_DIR)/node_modules/.package-lock.json

$(AS_DIR)/node_modules/.package-lock.json: $(AS_DIR)/package.json $(AS_DIR)/package-lock.json
	cd $(AS_DIR) && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error

lint: install
	$(BIN)/ruff check http_wasm_asgi tests guests bench
	$(BIN)/mypy --strict http_wasm_asgi

# Real servers the tests start on 127.0.0.1 (Prometheus, an OCI registry), from Debian when missing.
# chromium: tests/test_docs.py opens the built documentation site in it, headless; curl: tests/test_servers.py
# reads trailers with it over HTTP/2; nginx: bench/sidecar.py measures it in front of the same upstream.
SYSTEM_PACKAGES := prometheus:prometheus docker-registry:docker-registry chromium:chromium curl:curl \
  nginx:nginx-light
# Rust for the wasm guests (guests/rust), checked by path: the `rustc` first on PATH may be another toolchain.
GUEST_PACKAGES := /usr/bin/rustc:rustc /usr/lib/rustlib/wasm32-unknown-unknown/lib:libstd-rust-dev-wasm32 \
  /usr/bin/wasm-ld:lld

system-deps:
	@missing=""; for pair in $(SYSTEM_PACKAGES); do \
	  command -v $${pair%%:*} >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; done; \
	for pair in $(GUEST_PACKAGES); do \
	  test -e $${pair%%:*} || missing="$$missing $${pair#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

test: install system-deps check-guests lint
	$(BIN)/python -m pytest -q
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir .site
	$(BIN)/python bench/run.py --smoke
	$(BIN)/python bench/paired.py --samples 100

bench: install
	$(BIN)/python bench/run.py
