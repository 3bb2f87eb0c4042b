# Two entry points: `make demo` (example app behind a guest chain on uvicorn) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test install system-deps guests check-guests lint bench

$(BIN)/http-wasm-asgi: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,guests,examples]'
	touch $@

install: $(BIN)/http-wasm-asgi

demo: install
	$(BIN)/http-wasm-asgi serve examples/chain.yaml

guests: install
	$(BIN)/python guests/build.py

check-guests: install
	$(BIN)/python guests/build.py --check

lint: install
	$(BIN)/ruff check http_wasm_asgi tests guests bench
	$(BIN)/mypy --strict http_wasm_asgi

# Real servers the tests start on 127.0.0.1 (Prometheus, an OCI registry), from Debian when missing.
SYSTEM_PACKAGES := prometheus:prometheus docker-registry:docker-registry

system-deps:
	@missing=""; for pair in $(SYSTEM_PACKAGES); do \
	  command -v $${pair%%:*} >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

test: install system-deps check-guests lint
	$(BIN)/python -m pytest -q
	$(BIN)/python bench/run.py --smoke
	$(BIN)/python bench/paired.py --samples 100

bench: install
	$(BIN)/python bench/run.py
