"""Per-route chains: the route table's matching (every key, first match wins, the index agrees with a
plain first-to-last scan), `routes:` in config files and their errors, the Python API with
`add_middleware`, one guest per definition shared by routes, `check`/`inspect` printing the table,
the README's examples as written, and `serve` end to end."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from http_wasm_asgi import ConfigError, Guest, HttpWasmMiddleware, Route, load_config
from http_wasm_asgi.asgi.flow import Chain
from http_wasm_asgi.asgi.routes import RouteTable, normal_host, request_host, routed_path
from http_wasm_asgi.server.config import build_middleware
from http_wasm_asgi.testing import echo_app
from support import ROOT, docs
from support.attack import raw_http
from support.procs import COMMAND, free_port, run, serving

ZIG = ROOT / "guests" / "zig"
README = docs.text()  # README.md and the pages of docs/
EXAMPLE = ROOT / "examples" / "routes.yaml"
TOKEN = {"authorization": "Bearer demo-token"}


def scope(path: str = "/", method: str = "GET", headers: list[tuple[bytes, bytes]] | None = None) -> dict[str, Any]:
    return {"type": "http", "method": method, "path": path, "headers": headers or []}


def pick(routes: list[Route], request: dict[str, Any]) -> int:
    return RouteTable([(route, index) for index, route in enumerate(routes)], default=-1).match(request)


# --- matching ----------------------------------------------------------------------------------------

def test_each_match_key() -> None:
    routes = [Route(path="/exact"), Route(path_prefix="/api/", methods=["get", "POST"]),
              Route(host="api.example.com"), Route(host="*.example.com"),
              Route(headers={"X-Tenant": "blue"})]
    assert pick(routes, scope("/exact")) == 0
    assert pick(routes, scope("/exact/more")) == -1  # exact means exact
    assert pick(routes, scope("/api/users", "GET")) == 1  # methods are upper-cased
    assert pick(routes, scope("/api/users", "DELETE")) == -1
    assert pick(routes, scope("/x", headers=[(b"host", b"API.Example.com:8443")])) == 2  # case, port
    assert pick(routes, scope("/x", headers=[(b"host", b"api.example.com.")])) == 2  # trailing dot
    for _ in range(2):  # the second time from the remembered host values
        assert pick(routes, scope("/x", headers=[(b"host", b"api.example.com:80")])) == 2
    assert pick(routes, scope("/x", headers=[(b"host", b"a.b.example.com")])) == 3
    assert pick(routes, scope("/x", headers=[(b"host", b"example.com")])) == -1  # *. needs a subdomain
    assert pick(routes, scope("/x", headers=[(b"host", b"evilexample.com")])) == -1
    assert pick(routes, scope("/x", headers=[(b"x-tenant", b"red"), (b"x-tenant", b"blue")])) == 4
    assert pick(routes, scope("/x", headers=[(b"x-tenant", b"Blue")])) == -1  # values are exact


def test_all_given_keys_must_match_and_the_first_match_wins() -> None:
    routes = [Route(path_prefix="/api/", methods=["POST"], host="api.example.com"), Route(path_prefix="/api/"),
              Route(path_prefix="/")]
    host = [(b"host", b"api.example.com")]
    assert pick(routes, scope("/api/x", "POST", host)) == 0
    assert pick(routes, scope("/api/x", "GET", host)) == 1
    assert pick(routes, scope("/api/x", "POST")) == 1  # no host header
    assert pick(routes, scope("/other")) == 2
    assert pick([Route(path_prefix="/"), Route(path="/healthz")], scope("/healthz")) == 0  # order, not length


@pytest.mark.parametrize(("value", "host"), [
    (b"Example.COM", b"example.com"), (b"example.com:8080", b"example.com"), (b"example.com.", b"example.com"),
    (b"[::1]:8080", b"[::1]"), (b"[::1]", b"[::1]"), (b"127.0.0.1:80", b"127.0.0.1"), (b"", b""),
])
def test_host_header_normalisation(value: bytes, host: bytes) -> None:
    assert normal_host(value) == host
    assert request_host([(b"x", b"y"), (b"host", value)]) == host
    assert request_host([(b"x", b"y")]) == b""


def test_prefixes_are_plain_string_prefixes() -> None:
    routes = [Route(path_prefix="/api"), Route(path_prefix="/a/b/c"), Route(path="/a/b/")]
    assert pick(routes, scope("/apix")) == 0
    assert pick(routes, scope("/a/b/cd/e")) == 1
    assert pick(routes, scope("/a/b/")) == 2
    assert pick(routes, scope("/a/b/x")) == -1


@pytest.mark.parametrize(("keys", "message"), [
    ({"path_prefix": "api/"}, "path_prefix must be a path starting with '/'"),
    ({"path": "/a", "path_prefix": "/b"}, "give path (exact) or path_prefix, not both"),
    ({"methods": "GET"}, "methods must be a list"),
    ({"host": "a.*.example.com"}, "host must be a name like"),
    ({"host": "*example.com"}, "host must be a name like"),
])
def test_bad_routes_are_refused(keys: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        Route(name="routes[3]", **keys)


PATHS = st.sampled_from(["/", "/a", "/a/", "/a/b", "/a/b/", "/a/bc", "/ab/", "/b/", "/healthz"])
ROUTES = st.lists(st.builds(
    lambda kind, path, methods, host, header: Route(
        **({"path": path} if kind == "path" else {"path_prefix": path} if kind == "prefix" else {}),
        methods=methods, host=host, headers=header),
    st.sampled_from(["path", "prefix", "none"]), PATHS,
    st.none() | st.lists(st.sampled_from(["GET", "POST"]), min_size=1, max_size=2),
    st.none() | st.sampled_from(["x.example.com", "*.example.com"]),
    st.sampled_from([{}, {"x-t": "1"}])), max_size=12)


def linear(routes: list[Route], path: str, method: str, host: str, tenant: str) -> int:
    """What the index must agree with: every route's keys, checked first to last."""
    for index, route in enumerate(routes):
        if route.path is not None and path != route.path:
            continue
        if route.path_prefix is not None and not path.startswith(route.path_prefix):
            continue
        if route.methods is not None and method not in route.methods:
            continue
        if route.host is not None and not (host == route.host or (route.host.startswith("*.")
                                                                  and host.endswith(route.host[1:]))):
            continue
        if route.headers and route.headers.get("x-t") != tenant:
            continue
        return index
    return -1


@settings(max_examples=300, deadline=None)
@given(ROUTES, PATHS, st.sampled_from(["GET", "POST", "PUT"]), st.sampled_from(["x.example.com", "y.example.com",
                                                                               "example.com"]),
       st.sampled_from(["1", "2"]))
def test_the_index_agrees_with_a_first_to_last_scan(routes: list[Route], path: str, method: str, host: str,
                                                    tenant: str) -> None:
    request = scope(path, method, [(b"host", host.encode()), (b"x-t", tenant.encode())])
    assert pick(routes, request) == linear(routes, path, method, host, tenant)


@pytest.mark.parametrize(("path", "routed"), [
    ("/api/x", "/api/x"), ("/", "/"), ("/api/", "/api/"), ("/.well-known/x", "/.well-known/x"), ("/a/..b", "/a/..b"),
    ("/public/../api/x", "/api/x"), ("//api//x", "/api/x"), ("/api/./x", "/api/x"), ("/a/b/..", "/a/"),
    ("/a/b/.", "/a/b/"), ("/..", "/"), ("/../../api/x", "/api/x"), ("/api/x/..", "/api/"), ("/./", "/"),
])
def test_routes_match_the_path_without_dot_segments_or_repeated_slashes(path: str, routed: str) -> None:
    assert routed_path(path) == routed
    routes = [Route(path_prefix="/api/"), Route(path="/api/x"), Route(path="/a/"), Route(path_prefix="/")]
    assert pick(routes, scope(path)) == pick(routes, scope(routed))


NOISY_PATHS = st.lists(st.sampled_from(["a", "b", "bc", "healthz", ".", "..", ""]), max_size=5).map(
    lambda segments: "/" + "/".join(segments))


@settings(max_examples=300, deadline=None)
@given(ROUTES, NOISY_PATHS)
def test_a_noisy_path_is_routed_as_its_normal_form(routes: list[Route], path: str) -> None:
    routed = routed_path(path)
    assert "//" not in routed and "/./" not in routed and "/../" not in routed and routed.startswith("/")
    assert routed_path(routed) == routed
    request = [(b"host", b"x.example.com"), (b"x-t", b"1")]
    assert pick(routes, scope(path, headers=request)) == linear(routes, routed, "GET", "x.example.com", "1")


# --- Python API ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def guests() -> dict[str, Guest]:
    made = {"auth": Guest(ZIG / "auth.wasm", config=b"demo-token", name="auth"),
            "tag": Guest(ZIG / "headeradder.wasm", config=b"response x-tag tagged", name="tag")}
    yield made  # type: ignore[misc]
    for guest in made.values():
        guest.close()


async def test_routes_choose_the_chain_and_no_match_goes_to_the_app(guests: dict[str, Guest], client: Any) -> None:
    auth, tag = guests["auth"], guests["tag"]
    app = HttpWasmMiddleware(echo_app, routes=[Route(path="/healthz"), Route(path_prefix="/api/", guests=[tag, auth]),
                                               Route(path_prefix="/static/", guests=[tag])])
    async with client(app) as c:
        assert (await c.get("/api/x")).status_code == 401
        ok = await c.get("/api/x", headers=TOKEN)
        assert (ok.status_code, ok.headers["x-tag"]) == (200, "tagged")
        static = await c.get("/static/app.js")
        assert (static.status_code, static.headers["x-tag"]) == (200, "tagged")
        for path in ("/healthz", "/other"):  # a route without guests, and no route at all
            plain = await c.get(path)
            assert plain.status_code == 200 and "x-tag" not in plain.headers
    assert app.all_guests == (tag, auth)  # each guest once, shared by the routes naming it
    assert app.routes is not None and app.routes.targets[1] is not app.routes.targets[2]


async def test_add_middleware_with_routes(guests: dict[str, Guest]) -> None:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route as StarletteRoute

    async def hello(request: Any) -> PlainTextResponse:
        return PlainTextResponse("hi")

    app = Starlette(routes=[StarletteRoute("/{path:path}", hello)])
    app.add_middleware(HttpWasmMiddleware, routes=[Route(path_prefix="/api/", guests=[guests["auth"]])])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        assert (await c.get("/api/x")).status_code == 401
        assert (await c.get("/api/x", headers=TOKEN)).text == "hi"
        assert (await c.get("/open")).text == "hi"


def test_guests_and_routes_together_are_refused(guests: dict[str, Guest]) -> None:
    with pytest.raises(TypeError, match="not both"):
        HttpWasmMiddleware(echo_app, [guests["auth"]], routes=[Route()])
    with pytest.raises(TypeError, match="routes must be Route objects"):
        HttpWasmMiddleware(echo_app, routes=[{"path": "/"}])  # type: ignore[list-item]


# --- config files -------------------------------------------------------------------------------------

def write_config(folder: Path, routes: str, guests: str | None = None) -> Path:
    guests = guests or (f"  - {{name: auth, path: {ZIG / 'auth.wasm'}, config: demo-token}}\n"
                        f"  - {{name: log, path: {ZIG / 'accesslog.wasm'}}}\n")
    path = folder / "chain.yaml"
    path.write_text(f"app: cfgapp:app\nguests:\n{guests}routes:\n{routes}")
    return path


@pytest.mark.parametrize(("routes", "key", "words"), [
    ("  - {match: {path_prefix: /}, guests: [log, auht]}\n", "routes[0].guests[1]",
     "unknown guest 'auht'; did you mean 'auth'?"),
    ("  - {match: {path: /x}, guests: []}\n  - {match: {path_prefx: /}, guests: [log]}\n", "routes[1].match.path_prefx",
     "did you mean 'path_prefix'?"),
    ("  - {match: {path_prefix: /}, gusts: [log]}\n", "routes[0].gusts", "did you mean 'guests'?"),
    ("  - {match: {path_prefix: /}}\n", "routes[0].guests", "is missing"),
    ("  - {match: {methods: GET}, guests: []}\n", "routes[0].match.methods", "must be a list like [GET, POST]"),
    ("  - {match: {host: 'a.*.b'}, guests: []}\n", "routes[0].match", "host must be a name like"),
    ("  - {match: {path: api}, guests: []}\n", "routes[0].match", "path must be a path starting with '/'"),
    ("  - {match: {headers: {x-a: 1}}, guests: []}\n", "routes[0].match.headers.x-a", "must be a string"),
    ("  - {match: {path: /}, guests: [zzz]}\n", "routes[0].guests[0]",
     "unknown guest 'zzz'; defined guests: auth, log"),
])
def test_route_errors_name_the_route(tmp_path: Path, routes: str, key: str, words: str) -> None:
    path = write_config(tmp_path, routes)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: {key}: "), str(info.value)
    assert words in str(info.value)


def test_one_guest_per_definition_shared_by_routes(tmp_path: Path) -> None:
    path = write_config(tmp_path, "  - {match: {path_prefix: /api/}, guests: [log, auth]}\n"
                                  "  - {match: {path_prefix: /}, guests: [log]}\n")
    config = load_config(path)
    middleware = build_middleware(config, echo_app)
    try:
        assert middleware.routes is not None
        api, rest = middleware.routes.targets
        assert isinstance(api, Chain) and isinstance(rest, Chain)  # each route's chain, swapped with the whole
        assert api.guests[0] is rest.guests[0]  # `log`: one Guest, one pool
        assert [g.name for g in middleware.all_guests] == ["log", "auth"]
    finally:
        middleware.close()


def test_toml_routes_are_the_same_routes(tmp_path: Path) -> None:
    yaml_file = write_config(tmp_path, "  - {match: {path_prefix: /api/, methods: [GET], host: '*.example.com', "
                                       "headers: {x-a: b}}, guests: [log, auth]}\n  - {guests: [log]}\n")
    toml_file = tmp_path / "chain.toml"
    toml_file.write_text(f"""app = "cfgapp:app"
[[guests]]
name = "auth"
path = "{ZIG / 'auth.wasm'}"
config = "demo-token"
[[guests]]
name = "log"
path = "{ZIG / 'accesslog.wasm'}"
[[routes]]
match = {{path_prefix = "/api/", methods = ["GET"], host = "*.example.com", headers = {{x-a = "b"}}}}
guests = ["log", "auth"]
[[routes]]
guests = ["log"]
""")
    assert load_config(toml_file).routes == load_config(yaml_file).routes
    assert [spec.guests for spec in load_config(toml_file).routes or ()] == [[1, 0], [1]]


def test_a_config_without_routes_is_one_chain_as_before(tmp_path: Path) -> None:
    path = tmp_path / "chain.yaml"
    path.write_text(f"app: cfgapp:app\nguests:\n  - {{path: {ZIG / 'auth.wasm'}}}\n")
    middleware = build_middleware(load_config(path), echo_app)
    assert middleware.routes is None and len(middleware.guests) == 1
    middleware.close()


# --- the command, the README, the bench ---------------------------------------------------------------

TABLE = """routes (first match wins):
  routes[0]  path=/healthz  ->  (no guests: straight to the app)
  routes[1]  path_prefix=/api/ methods=GET,POST  ->  log, auth, powered
  routes[2]  host=*.example.com  ->  log, shop
  routes[3]  header x-debug=on  ->  debug
  no match   ->  (no guests: straight to the app)
"""


@pytest.mark.parametrize("command", ["check", "inspect"])
def test_check_and_inspect_print_the_route_table(command: str) -> None:
    result = run([COMMAND, command, "examples/routes.yaml"])
    assert result.returncode == 0, result.stderr
    assert TABLE in result.stdout


def readme_block(section: str, language: str) -> str:
    body = docs.section(section)
    match = re.search(rf"```{language}\n(.*?)```", body, re.DOTALL)
    assert match, f"README '{section}' has no {language} block"
    return match.group(1)


def test_the_readme_routes_config_is_the_example_file() -> None:
    text = EXAMPLE.read_text()
    assert readme_block("Routes", "yaml") == text[text.index("app: hello:app\n"):]  # below its comments
    assert "http-wasm-asgi serve examples/routes.yaml" in README


def check_routes_example(url: str, port: int) -> None:
    """What examples/routes.yaml's comments promise."""
    with httpx.Client(base_url=url, timeout=10) as c:
        health = c.get("/healthz")
        assert health.status_code == 200 and "x-powered-by" not in health.headers
        assert c.get("/api/whoami").status_code == 401
        ok = c.get("/api/whoami", headers=TOKEN)
        assert (ok.status_code, ok.headers["x-powered-by"]) == (200, "http-wasm")
        other_method = c.head("/api/whoami")  # not in the route's methods: no guest runs
        assert other_method.status_code == 200 and "x-powered-by" not in other_method.headers
        shop = c.get("/", headers={"host": "shop.example.com"})
        assert (shop.status_code, shop.headers["x-site"]) == (200, "shop")
        debug = c.get("/anything", headers={"x-debug": "on"})
        assert debug.headers["x-debug-chain"] == "yes" and "x-site" not in debug.headers
        plain = c.get("/anything")
        assert not {"x-debug-chain", "x-site", "x-powered-by"} & set(plain.headers)


def raw_get(url: str, target: str) -> int:
    """The status of `GET target` sent byte for byte (clients would remove the dot segments first)."""
    request = f"GET {target} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n".encode()
    return int(raw_http(url, request, timeout=10).split(b" ", 2)[1])


@pytest.mark.slow
@pytest.mark.servers
def test_serve_runs_the_routes_example() -> None:
    port = free_port()
    with serving([COMMAND, "serve", "examples/routes.yaml", "--port", str(port)], port, ready_path="/healthz") as s:
        check_routes_example(s.url, port)
        for sneaky in ("/healthz/../api/whoami", "//api/whoami", "/api/./whoami", "/api/%2e%2e/api/whoami"):
            assert raw_get(s.url, sneaky) == 401, sneaky  # the /api/ route's auth guest ran
        assert raw_get(s.url, "/api/../healthz") == 200  # and /healthz's (no guests) for this one
        out = s.wait_for_output("guest.log: GET /api/whoami 200")
    assert "guest.log: GET /api/whoami 401" in out and "guest.log: HEAD" not in out
    assert "guest.log: GET / 200" in out  # the wildcard-host route logs too
    assert "guest.log: GET /healthz " not in out and "guest.log: GET /anything" not in out
    assert "guest.log: GET /healthz/../api/whoami 401" in out  # the log guest sees the request as it came


async def test_the_readme_python_example_runs_as_written(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # its guest paths are relative to the repository's top folder
    namespace: dict[str, Any] = {}
    exec(compile(readme_block("Routes", "python"), "README.md", "exec"), namespace)
    transport = httpx.ASGITransport(app=namespace["app"])
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        assert (await c.get("/healthz")).status_code == 200
        assert (await c.get("/api/items")).status_code == 401
        assert (await c.post("/api/items", headers=TOKEN)).status_code == 200
        assert (await c.get("/", headers={"host": "admin.example.com"})).status_code == 401
        assert (await c.get("/")).text == "hello"


def test_the_bench_script_runs() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "routes.py"), "--smoke"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "50 routes" in result.stdout and "worst case" in result.stdout
