"""The documentation: every example in README.md and docs/ runs, the config schema is the code's, and the
site builds strictly and renders in a real browser (headless Chromium) with its navigation and search.

A block that cannot run here says why, on the line before it: `<!-- not run: reason -->`, or names the
test that runs it: `<!-- run by: tests/test_x.py::test_name -->`.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import tomllib
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from support import ROOT
from support.docs import DOCS, Block, blocks, section

BIN = Path(sys.executable).parent
CONFIG_LANGUAGES = ("yaml", "toml")
ALL = blocks()


def chosen(*languages: str) -> list[Any]:
    return [pytest.param(block, id=block.id) for block in ALL if block.language in languages and block.mark is None]


def test_every_mark_gives_a_reason_or_an_existing_test() -> None:
    for block in ALL:
        if block.mark == "not run":
            assert len(block.reason) >= 20, f"{block.id}: say why it is not run"
        elif block.mark == "run by":
            file, _, name = block.reason.partition("::")
            assert re.search(rf"^(async )?def {name}\(", (ROOT / file).read_text(), re.M), f"{block.id}: {block.reason}"


def test_every_shell_block_is_run_or_marked() -> None:
    unmarked = [block.id for block in ALL if block.language in ("sh", "bash") and block.mark is None
                and block.path.name != "config-schema.md"]
    assert not unmarked, f"run these here or mark them with their reason: {unmarked}"


@pytest.mark.parametrize("block", chosen("python"))
def test_python_block_runs(block: Block, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # guest paths are relative to the repository's top folder
    monkeypatch.syspath_prepend(str(ROOT / "examples"))  # `app: hello:app`
    namespace: dict[str, Any] = {"__name__": "docs_example"}
    exec(compile(block.code, str(block.path), "exec"), namespace)
    for value in list(namespace.values()):  # close what the example opened
        close = getattr(value, "close", None)
        if type(value).__name__ in ("Guest", "HttpWasmMiddleware") and callable(close):
            close()


@pytest.mark.parametrize("block", chosen(*CONFIG_LANGUAGES))
def test_config_block_loads(block: Block) -> None:
    from http_wasm_asgi import load_config

    # next to the examples, so that `path: ../guests/...` resolves as it does for examples/*.yaml
    file = ROOT / "examples" / f".docs-{uuid.uuid4().hex}.{block.language}"
    file.write_text(block.code)
    try:
        config = load_config(file)
    finally:
        file.unlink()
    assert config.guests
    parsed = tomllib.loads(block.code) if block.language == "toml" else yaml.safe_load(block.code)
    assert_valid(parsed, block.id)


@pytest.mark.slow
@pytest.mark.servers
def test_the_schema_page_commands_run_as_written() -> None:
    block = next(b for b in ALL if b.path.name == "config-schema.md" and b.language == "sh")
    before = (DOCS / "config.schema.json").read_bytes()
    for line in block.code.splitlines():
        command = line.split("  #", 1)[0].split()
        result = subprocess.run([sys.executable, *command[1:]], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
    assert (DOCS / "config.schema.json").read_bytes() == before


# --- the config schema ---------------------------------------------------------------------------------------

def generated_schema() -> str:
    sys.path.insert(0, str(DOCS))
    try:
        import gen_schema
    finally:
        sys.path.remove(str(DOCS))
    return str(gen_schema.render())


def test_the_checked_in_schema_is_what_the_code_generates() -> None:
    assert (DOCS / "config.schema.json").read_text() == generated_schema(), "run: python docs/gen_schema.py"


def assert_valid(config: Any, where: str) -> None:
    import jsonschema

    schema = json.loads((DOCS / "config.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(config)]
    assert not errors, f"{where}: {errors}"


def test_every_example_config_is_valid_against_the_schema() -> None:
    import jsonschema

    jsonschema.Draft202012Validator.check_schema(json.loads((DOCS / "config.schema.json").read_text()))
    files = [p for p in sorted((ROOT / "examples").rglob("*")) if p.suffix in (".yaml", ".toml")]
    chains = 0
    for file in files:
        config = tomllib.loads(file.read_text()) if file.suffix == ".toml" else yaml.safe_load(file.read_text())
        if isinstance(config, dict) and ({"app", "upstream"} & set(config)):
            assert_valid(config, str(file))
            chains += 1
    configmap = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "configmap.yaml").read_text())
    assert_valid(yaml.safe_load(configmap["data"]["chain.yaml"]), "configmap.yaml")
    assert chains >= 7


def test_the_schema_refuses_what_the_loader_refuses() -> None:
    import jsonschema

    validator = jsonschema.Draft202012Validator(json.loads((DOCS / "config.schema.json").read_text()))
    for wrong in ({"app": "hello:app", "guests": [{"path": "a.wasm", "max_instance": 2}]},
                  {"app": "hello:app", "upstream": "http://127.0.0.1:9000", "guests": []},
                  {"app": "hello:app", "guests": [{"path": "a.wasm", "memory_limit": "lots"}]},
                  {"app": "hello:app", "guests": [{"path": "a.wasm", "recycle_memory": "off"}]},
                  {"app": "hello:app", "log_level": "loud", "guests": []}):
        assert not validator.is_valid(wrong), wrong
    for recycle in ("8MiB", 65536, None, "none"):  # what the loader takes: a size, or null/none (never)
        assert_valid({"app": "hello:app", "guests": [{"path": "a.wasm", "recycle_memory": recycle}]}, str(recycle))


def test_the_config_reference_names_every_key() -> None:
    from http_wasm_asgi.asgi.routes import MATCH_KEYS
    from http_wasm_asgi.server import config
    from http_wasm_asgi.server.interop import DAPR_KEYS, SETTINGS_KEYS

    reference = section("Reference of every key")
    keys = [*config.TOP_KEYS, *config.GUEST_KEYS, *(f"server.{k}" for k in config.SERVER_KEYS),
            *(f"metrics.{k}" for k in config.METRICS_KEYS), *(f"upstream_timeout.{k}" for k in config.TIMEOUT_KEYS),
            *(f"routes[].{k}" for k in config.ROUTE_KEYS), *(f"routes[].match.{k}" for k in MATCH_KEYS),
            *(f"wasi.{k}" for k in config.WASI_KEYS), *(f"settings.{k}" for k in SETTINGS_KEYS),
            *(f"dapr.{k}" for k in DAPR_KEYS)]
    missing = [key for key in keys if f"| `{key}` |" not in reference]
    assert not missing, f"add to docs/guide/config-files.md: {missing}"


# --- the site -------------------------------------------------------------------------------------------------

def test_the_readme_is_short_and_the_package_description_has_no_relative_links() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 8 * 1024 + 512, len(readme.encode())
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    description = (ROOT / pyproject["project"]["readme"]).read_text()
    relative = [link for link in re.findall(r"\]\(([^)]+)\)", description) if not re.match(r"https?://", link)]
    assert not relative, f"links that break on the package index: {relative}"


def test_every_page_is_in_the_navigation() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert pages == set(re.findall(r":\s*(\S+\.md)\s*$", nav, re.M))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run([str(BIN / "mkdocs"), "build", "--strict", "--site-dir", str(out)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def test_the_site_builds_strictly_with_the_api_and_the_search_index(site: Path) -> None:
    api = (site / "reference" / "python-api" / "index.html").read_text()
    for name in ("HttpWasmMiddleware", "replace_guests", "GuestClient", "load_config", "GuestCollector"):
        assert name in api, name
    index = json.loads((site / "search" / "search_index.json").read_text())
    hits = {doc["location"].split("#")[0] for doc in index["docs"] if "memory_budget" in doc["text"]}
    assert "guide/config-files/" in hits and "deploy/tuning/" in hits, hits
    assert 'class="mermaid"' in (site / "internals" / "architecture" / "index.html").read_text()
    assert (site / "config.schema.json").read_bytes() == (DOCS / "config.schema.json").read_bytes()


@pytest.fixture(scope="module")
def served(site: Path) -> Iterator[str]:
    handler = functools.partial(QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail("Debian's chromium is missing: `make test` installs it (SYSTEM_PACKAGES in the Makefile)")
    return found


def browse(url: str, tmp_path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,900",
                           "--virtual-time-budget=5000", *flags, url],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize(("page", "title", "content"), [
    ("", "http-wasm-asgi", "Where to read on"),
    ("guide/config-files/", "Config files", "Reference of every key"),
])
def test_a_browser_renders_the_page_with_its_navigation(served: str, tmp_path: Path, page: str, title: str,
                                                       content: str) -> None:
    shot = tmp_path / f"{page.strip('/').replace('/', '-') or 'home'}.png"
    taken = browse(served + "/" + page, tmp_path, f"--screenshot={shot}")
    assert shot.is_file() and shot.stat().st_size > 10_000, taken.stderr[-2000:]
    dom = browse(served + "/" + page, tmp_path, "--dump-dom").stdout
    assert f"<title>{title}" in dom and content in dom
    nav = dom[dom.index('class="md-nav md-nav--primary"'):]
    for entry in ("Starlette and FastAPI", "The command", "Writing a guest", "Python API", "Architecture"):
        assert entry in nav, entry


@pytest.mark.slow
def test_the_search_box_finds_memory_budget(served: str, tmp_path: Path) -> None:
    """The page has the search box, and the index its worker loads (over HTTP, as the browser does) finds the key.

    Headless Chromium's --dump-dom returns before Material's search worker has answered a `?q=` query, so the
    results list itself is not read here; the index is what the worker searches."""
    dom = browse(served + "/?q=memory_budget", tmp_path, "--dump-dom").stdout
    assert 'data-md-component="search-query"' in dom  # the search box
    shot = tmp_path / "search.png"
    browse(served + "/?q=memory_budget", tmp_path, f"--screenshot={shot}")
    assert shot.is_file()
    with urllib.request.urlopen(served + "/search/search_index.json", timeout=10) as response:
        index = json.load(response)
    pages = {doc["location"].split("#")[0] for doc in index["docs"] if "memory_budget" in doc["text"]}
    assert {"guide/config-files/", "deploy/tuning/", "guide/python/"} <= pages, pages
