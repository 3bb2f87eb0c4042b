# Two entry points: `make demo` (example app behind a guest chain on uvicorn) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test install guests check-guests lint bench

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

test: install check-guests lint
	$(BIN)/python -m pytest -q
	$(BIN)/python bench/run.py --smoke

bench: install
	$(BIN)/python bench/run.py
