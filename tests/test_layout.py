"""The package's rooms and the way imports go between them, as docs/internals/architecture.md says: each module in a
room, imports only from its own room or lower ones, no import cycle (deferred imports included, but for the
ones listed with their reason), no module or C file over 700 lines, short functions, and a core import that
needs neither PyYAML nor an HTTP client.

Run alone to print the import graph: `python tests/test_layout.py`.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "http_wasm_asgi"

# Rooms, lowest first: a module imports from its own room or lower ones only.
ROOMS: list[tuple[str, set[str]]] = [
    ("leaves", {"errors", "abi", "files", "registry"}),  # ABI facts, exceptions, atomic files, process registries
    ("_native", {"_native"}),  # the native path: loading, the contract, every bind
    ("wasm", {"wasm"}),  # wasmtime: engine, compile cache, both call paths, scheduler, modules, instances, snapshots
    ("host", {"host", "tracing", "pool", "snapshot_cache"}),  # HTTP state and host functions, pool, snapshot cache
    ("guest", {"guest"}),  # Guest: a module, its host functions and its pool
    ("asgi", {"asgi"}),  # the ASGI binding: middleware, chain and flow, routes, proxy
    ("devkit", {"devkit"}),  # guest authors' tools: testing, pytest plugin, devtools, conformance
    ("server", {"server"}),  # config files, serve, the command, metrics, guest sources, OCI
    ("entry", {"__init__", "__main__", "testing", "metrics"}),  # the public paths
]
# Deferred imports (inside a function) that close a cycle, each for a stated reason.
DEFERRED_CYCLES: dict[tuple[str, str], str] = {
    ("asgi.middleware", "server.config"): "HttpWasmMiddleware.from_config: a convenience entry point of the room above",
}
MAX_MODULE_LINES = 700
MAX_FUNCTION_LINES = 50
LONG_FUNCTIONS = {  # (module, function): why it stays long
    ("wasm.snapshot.code", "_step"): "one decoder step: a flat dispatch over every opcode family's immediates",
}


def _name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, tuple[Path, ast.Module]]:
    return {_name(path): (path, ast.parse(path.read_text(), str(path))) for path in sorted(PACKAGE.rglob("*.py"))}


def room_of(module: str) -> int:
    """The rank of a module's room (a subpackage is one room; a top-level module is named in ROOMS)."""
    first = module.split(".")[0]
    for rank, (_, members) in enumerate(ROOMS):
        if module in members or first in members:
            return rank
    raise AssertionError(f"{module} has no room: add it to ROOMS (and docs/internals/architecture.md)")


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> Iterator[str]:
    """The package modules a relative `from ... import ...` names."""
    if module == "__init__":
        package: list[str] = []
    else:
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
    if node.module:
        base = [*base, *node.module.split(".")]
    known = {_name(p) for p in PACKAGE.rglob("*.py")}
    for alias in node.names:
        candidate = ".".join([*base, alias.name])
        yield candidate if candidate in known else ".".join(base) or "__init__"


def _imports(module: str, path: Path, tree: ast.Module, *, deferred: bool) -> Iterator[str]:
    """Package modules imported at module level (deferred=False) or inside functions (deferred=True).

    `if TYPE_CHECKING:` blocks are for the type checker only and never run."""
    def walk(nodes: list[ast.stmt], in_function: bool) -> Iterator[str]:
        for node in nodes:
            if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
                continue
            if isinstance(node, ast.ImportFrom) and node.level >= 1 and in_function == deferred:
                yield from _resolve(module, path, node)
            for field in ("body", "orelse", "finalbody", "handlers"):
                children = getattr(node, field, None)
                if isinstance(children, list):
                    nested = in_function or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                    yield from walk([c for c in children if isinstance(c, ast.stmt | ast.ExceptHandler)],
                                    nested)  # type: ignore[arg-type]

    yield from (name for name in walk(tree.body, False) if name != module)


def import_graph(*, deferred: bool = False) -> dict[str, set[str]]:
    return {name: set(_imports(name, path, tree, deferred=deferred)) for name, (path, tree) in _modules().items()}


def test_every_module_has_a_room() -> None:
    for module in _modules():
        room_of(module)


def test_imports_go_to_the_same_room_or_lower_ones() -> None:
    wrong = {(module, dep) for module, deps in import_graph().items() for dep in deps
             if room_of(dep) > room_of(module)}
    assert not wrong, f"imports of a higher room: {sorted(wrong)}"


def test_deferred_imports_go_down_too_but_for_the_listed_ones() -> None:
    upward = {(module, dep) for module, deps in import_graph(deferred=True).items() for dep in deps
              if room_of(dep) > room_of(module)}
    assert upward == set(DEFERRED_CYCLES), upward


def test_no_import_cycle() -> None:
    graph = import_graph()
    for module, deps in import_graph(deferred=True).items():
        graph[module] |= {dep for dep in deps if (module, dep) not in DEFERRED_CYCLES}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for dep in sorted(graph.get(name, ())):
            assert state.get(dep) != 1, "import cycle: " + " -> ".join([*path, name, dep])
            if dep not in state:
                visit(dep, [*path, name])
        state[name] = 2

    for name in graph:
        if name not in state:
            visit(name, [])


def test_no_module_and_no_c_file_is_over_700_lines() -> None:
    files = [*PACKAGE.rglob("*.py"), *PACKAGE.rglob("*.c"), *PACKAGE.rglob("*.h")]
    long = {str(f.relative_to(PACKAGE)): n for f in files if (n := len(f.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"split these along their jobs: {long}"
    assert any(f.suffix == ".c" for f in files)  # the check reads the C too


def test_functions_are_short() -> None:
    long = {}
    for name, (_, tree) in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES and (name, node.name) not in LONG_FUNCTIONS:
                    long[f"{name}.{node.name}"] = lines
    assert not long, f"split these along what they do (or say why in LONG_FUNCTIONS): {long}"


def test_the_core_import_needs_neither_yaml_nor_an_http_client() -> None:
    code = ("import sys, http_wasm_asgi\n"
            "from http_wasm_asgi import Guest, HttpWasmMiddleware\n"
            "print(sorted(m for m in ('yaml', 'httpx', 'aiohttp', 'starlette') if m in sys.modules))\n"
            "from http_wasm_asgi import ConfigError, load_config\n"
            "print('yaml' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["[]", "True"], out


def test_the_public_paths_stay() -> None:
    code = ("from http_wasm_asgi import Guest, HttpWasmMiddleware, Route, ConfigError, load_config, fetch_guest\n"
            "from http_wasm_asgi.testing import GuestClient, RecordingApp, echo_app, serve\n"
            "from http_wasm_asgi.metrics import GuestCollector, registry, figures\n"
            "import importlib.metadata as m\n"
            "eps = {e.group: e.value for e in m.distribution('http-wasm-asgi').entry_points}\n"
            "print(eps['console_scripts'], eps['pytest11'])\n"
            "import importlib; [importlib.import_module(v.split(':')[0]) for v in eps.values()]\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["http_wasm_asgi.server.cli:main", "http_wasm_asgi.devkit.pytest_plugin"]


if __name__ == "__main__":
    for module, imports in sorted(import_graph().items()):
        names = ", ".join(sorted(imports)) or "(nothing of the package)"
        print(f"{module:24} [{ROOMS[room_of(module)][0]}] -> {names}")
