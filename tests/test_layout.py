"""The package's layering, as README "Layout" states it: which module may import which, no import cycle,
the core import needs neither PyYAML nor an HTTP client, and functions stay short.

Run alone to print the import graph: `python tests/test_layout.py`.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "http_wasm_asgi"

# module -> the package modules it may import at module level (one direction: lower layers only)
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "abi": set(),
    "asgi": set(),
    "snapshot": {"abi"},
    "host": {"abi", "errors"},
    "tracing": {"abi", "errors"},
    "runtime": {"abi", "errors"},
    "pool": {"errors"},
    "guest": {"abi", "errors", "host", "pool", "runtime", "snapshot", "tracing"},
    "routes": set(),
    "oci": set(),
    "sources": {"oci", "runtime"},
    "middleware": {"abi", "asgi", "errors", "guest", "host", "routes", "runtime"},
    "proxy": {"asgi"},
    "config": {"asgi", "errors", "guest", "middleware", "proxy", "routes", "sources"},
    "metrics": {"asgi", "guest", "middleware", "runtime"},
    "serving": {"asgi", "config", "middleware", "metrics", "sources"},
    "testing": {"asgi", "errors", "guest", "middleware", "tracing"},
    "pytest_plugin": {"testing"},  # imported inside fixtures only: pytest loads the plugin in every session
    "devtools": {"asgi", "guest", "middleware", "testing"},
    "conformance": {"asgi", "guest", "middleware", "testing"},
    "cli": {"abi", "config", "errors", "guest", "conformance", "devtools", "oci", "routes", "serving"},
    "__init__": {"errors", "guest", "middleware", "routes", "sources"},
    "__main__": {"cli"},
}
# imports of a higher layer deferred into a function, each for a stated reason (deferred imports of
# allowed modules, e.g. cli's of conformance, only keep start-up light and need no entry here)
DEFERRED: set[tuple[str, str]] = {
    ("middleware", "config"),  # HttpWasmMiddleware.from_config: a convenience entry point of the layer above
    ("__init__", "config"),  # PEP 562: ConfigError/load_config without loading PyYAML for everyone
}
MAX_FUNCTION_LINES = 50
LONG_FUNCTIONS = {  # (module, function): why it stays long
    ("snapshot", "_step"): "one decoder step: a flat dispatch over every opcode family's immediates",
}


def _modules() -> dict[str, ast.Module]:
    return {path.stem: ast.parse(path.read_text(), str(path)) for path in sorted(PACKAGE.glob("*.py"))}


def _package_imports(tree: ast.Module, *, deferred: bool) -> Iterator[str]:
    """Package modules imported at module level (deferred=False) or inside functions (deferred=True).

    `if TYPE_CHECKING:` blocks are for the type checker only and never run.
    """
    def walk(nodes: list[ast.stmt], in_function: bool) -> Iterator[str]:
        for node in nodes:
            if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
                continue
            if isinstance(node, ast.ImportFrom) and node.level == 1 and in_function == deferred:
                if node.module:
                    yield node.module.split(".")[0]
                else:
                    yield from (alias.name for alias in node.names)
            for field in ("body", "orelse", "finalbody", "handlers"):
                children = getattr(node, field, None)
                if isinstance(children, list):
                    nested = in_function or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                    yield from walk([c for c in children if isinstance(c, ast.stmt | ast.ExceptHandler)],
                                    nested)  # type: ignore[arg-type]

    yield from walk(tree.body, False)


def import_graph() -> dict[str, set[str]]:
    return {name: set(_package_imports(tree, deferred=False)) for name, tree in _modules().items()}


def test_every_module_has_a_declared_place() -> None:
    assert set(_modules()) == set(ALLOWED), "add the new module to ALLOWED (and README Layout)"


def test_module_level_imports_go_one_direction_only() -> None:
    for name, imports in import_graph().items():
        assert imports <= ALLOWED[name], f"{name} imports {sorted(imports - ALLOWED[name])}"


def test_no_import_cycle() -> None:
    graph = import_graph()
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


def test_deferred_imports_are_the_declared_ones() -> None:
    found = {(name, dep) for name, tree in _modules().items() for dep in _package_imports(tree, deferred=True)}
    found = {(name, dep) for name, dep in found if dep in ALLOWED and dep not in ALLOWED[name]}
    assert found == DEFERRED


def test_the_core_import_needs_neither_yaml_nor_an_http_client() -> None:
    code = ("import sys, http_wasm_asgi\n"
            "from http_wasm_asgi import Guest, HttpWasmMiddleware\n"
            "print(sorted(m for m in ('yaml', 'httpx', 'aiohttp', 'starlette') if m in sys.modules))\n"
            "from http_wasm_asgi import ConfigError, load_config\n"
            "print('yaml' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["[]", "True"], out


def test_functions_are_short() -> None:
    long = {}
    for name, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES and (name, node.name) not in LONG_FUNCTIONS:
                    long[f"{name}.{node.name}"] = lines
    assert not long, f"split these along what they do (or say why in LONG_FUNCTIONS): {long}"


if __name__ == "__main__":
    for module, imports in sorted(import_graph().items()):
        print(f"{module:12} -> {', '.join(sorted(imports)) or '(nothing of the package)'}")
