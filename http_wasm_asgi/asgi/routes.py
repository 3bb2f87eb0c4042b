"""Per-route chains: which guests run for a request, chosen once at its start.

A `Route` names the guests of one chain and the request it applies to (`path_prefix`, exact
`path`, `methods`, `host` exact or `*.example.com`, `headers` name -> exact value; every given
key must match). A `RouteTable` holds routes in order, each with its target (the chain that
runs it); `match(scope)` returns the target of the first route that matches, or the default.
Paths are matched without dot segments or repeated slashes (`routed_path`), so `/x/../api/`
cannot slip past an `/api/` route.

Matching must stay cheap with many routes, so the table is indexed once at build time: by the
path's folders (`/`, `/api/`, `/api/v1/` of `/api/v1/users`) and then by method. Only the few
routes left for that (folder, method) pair are checked one by one, in their order, so first
match wins; where a host condition comes first, they are also looked up by the Host header's
value (worked out once per value seen, see `_ByHost`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from .. import _native

if TYPE_CHECKING:
    from ..guest import Guest

Target = TypeVar("Target")
MATCH_KEYS = ("path_prefix", "path", "methods", "host", "headers")
_OTHER = ""  # the method bucket of methods no route names


@dataclass(frozen=True)
class Route:
    """One route: the guests to run (outermost first) for requests matching every given key.

    A route without match keys matches every request; a route without guests sends the
    requests it matches straight to the app (e.g. `Route(path="/healthz")` before a catch-all).
    """

    guests: Sequence[Guest] = ()
    path_prefix: str | None = None
    path: str | None = None
    methods: Sequence[str] | None = None
    host: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    name: str = ""  # shown by `check` and in errors, e.g. "routes[1]"

    def __post_init__(self) -> None:
        for key in ("path_prefix", "path"):
            value = getattr(self, key)
            if value is not None and not (isinstance(value, str) and value.startswith("/")):
                raise ValueError(f"{self.label}: {key} must be a path starting with '/', got {value!r}")
        if self.path is not None and self.path_prefix is not None:
            raise ValueError(f"{self.label}: give path (exact) or path_prefix, not both")
        if isinstance(self.methods, str):
            raise ValueError(f"{self.label}: methods must be a list like ['GET', 'POST'], got {self.methods!r}")
        if self.methods is not None:
            object.__setattr__(self, "methods", tuple(str(m).upper() for m in self.methods))
        if self.host is not None:
            object.__setattr__(self, "host", _host_pattern(self.label, self.host))
        object.__setattr__(self, "guests", tuple(self.guests))
        object.__setattr__(self, "headers", {str(k).lower(): str(v) for k, v in dict(self.headers).items()})

    @property
    def label(self) -> str:
        return self.name or "route"

    def describe(self) -> str:
        """The match keys as one line, e.g. `path_prefix=/api/ methods=GET,POST`."""
        parts = [f"path_prefix={self.path_prefix}" if self.path_prefix is not None else "",
                 f"path={self.path}" if self.path is not None else "",
                 f"methods={','.join(self.methods)}" if self.methods is not None else "",
                 f"host={self.host}" if self.host is not None else "",
                 *(f"header {k}={v}" for k, v in self.headers.items())]
        return " ".join(p for p in parts if p) or "(every request)"


def _host_pattern(label: str, host: str) -> str:
    if not isinstance(host, str) or not host or "*" in host.lstrip("*.") or (host.startswith("*")
                                                                             and not host.startswith("*.")):
        raise ValueError(f"{label}: host must be a name like 'api.example.com' or '*.example.com', got {host!r}")
    host = host.lower().rstrip(".")
    host.encode("idna")  # a UnicodeError (a ValueError) for a name no request can carry
    return host


class _Check:
    """A route compiled for one index node: only what the node does not already guarantee."""

    __slots__ = ("always", "exact", "headers", "host", "host_suffix", "hosted", "prefix", "target")

    def __init__(self, route: Route, target: Any, node: str) -> None:
        # a path that reached `node` starts with it: a prefix it starts with needs no check, nor an
        # exact path that is the node itself (a leaf: the whole path)
        self.exact = None if route.path is None or (route.path == node and not node.endswith("/")) else route.path
        prefix = route.path_prefix
        self.prefix = None if prefix is None or node.startswith(prefix) else prefix
        host = None if route.host is None else route.host.encode("idna")
        self.host = host if host is not None and not host.startswith(b"*.") else None
        self.host_suffix = host[1:] if host is not None and host.startswith(b"*.") else None
        self.hosted = host is not None
        self.headers = tuple((k.encode("latin-1"), v.encode("latin-1")) for k, v in route.headers.items())
        self.always = self.exact is None and self.prefix is None and host is None and not self.headers
        self.target = target

    def host_matches(self, host: bytes) -> bool:
        return host == self.host or (self.host_suffix is not None and host.endswith(self.host_suffix))

    def for_host(self) -> _Check:
        """This check once its host condition is known to hold (a `_ByHost` list keeps these)."""
        known = copy.copy(self)
        known.host = known.host_suffix = None
        known.hosted = False
        known.always = known.exact is None and known.prefix is None and not known.headers
        return known


def _node_key(route: Route) -> str:
    """The deepest index node every path the route matches passes through ("/" when it is any path).

    Nodes are the path's folders ("/api/", "/api/v1/") and, as leaves, whole paths ("/healthz").
    """
    path = route.path if route.path is not None else route.path_prefix
    if path is None:
        return "/"
    if route.path is not None and not path.endswith("/"):
        return path
    return path[:path.rfind("/") + 1]


def _ancestors(key: str) -> list[str]:
    """The nodes from the root down to `key`: "/api/v1/" -> ["/", "/api/", "/api/v1/"]."""
    nodes = ["/"]
    cut = key.find("/", 1)
    while cut > 0:
        nodes.append(key[:cut + 1])
        cut = key.find("/", cut + 1)
    if not key.endswith("/"):
        nodes.append(key)
    return nodes


def normal_host(value: bytes) -> bytes:
    """A Host header's value lower case, without port or trailing dot."""
    host = value.lower()
    if 58 in host:  # b":" (an int: a memchr, where a bytes needle costs a search set-up)
        host = host[:host.rfind(b"]") + 1] if host[0] == 91 else host[:host.find(b":")]  # [IPv6]:port, name:port
    return host[:-1] if host and host[-1] == 46 else host  # 46: a trailing b"."


_HOSTS_KEPT = 1024  # the Host values a _ByHost remembers (a server sees a handful; more are worked out each time)


def request_host(headers: Sequence[tuple[bytes, bytes]]) -> bytes:
    """The request's Host header as `normal_host` gives it (b"" if absent)."""
    for name, value in headers:
        if name == b"host":
            return normal_host(value)
    return b""


class _ByHost:
    """The candidates of a (node, method) when some have a host condition: per Host header value,
    the checks that hold for it, host conditions dropped (worked out once per value seen)."""

    __slots__ = ("checks", "seen")

    def __init__(self, checks: tuple[_Check, ...]) -> None:
        self.checks = checks
        self.seen: dict[bytes, tuple[_Check, ...]] = {}

    def candidates(self, headers: Sequence[tuple[bytes, bytes]]) -> tuple[_Check, ...]:
        value = b""
        for name, given in headers:
            if name == b"host":
                value = given
                break
        found = self.seen.get(value)
        if found is None:
            host = normal_host(value)
            found = tuple(c.for_host() if c.hosted else c for c in self.checks if not c.hosted or c.host_matches(host))
            if len(self.seen) < _HOSTS_KEPT:
                self.seen[value] = found
        return found


# an index node: (its key's length, {child key: node} or None, {method: candidate checks in route order,
# or a _ByHost of them when some have a host condition})
_Node = tuple[int, "dict[str, _Node] | None", dict[str, "tuple[_Check, ...] | _ByHost"]]


class RouteTable(Generic[Target]):
    """Routes in order with their targets; `match(scope)` picks the first that matches.

    Immutable once built. The index is a tree of path folders: a request walks down it as far as
    its path goes (one dict lookup per folder), and the node it stops at holds, per method, the
    only routes that can match it (those keyed there or above), with the checks it does not
    already guarantee, in route order.
    """

    __slots__ = ("_root", "default", "routes", "targets")
    # what the native call uses of a route table (see _native: the contract)
    NATIVE_SLOTS: ClassVar = ()
    NATIVE_ATTRIBUTES: ClassVar = ("match",)

    def __init__(self, routes: Sequence[tuple[Route, Target]], default: Target) -> None:
        self.routes: tuple[Route, ...] = tuple(route for route, _ in routes)
        self.targets: tuple[Target, ...] = tuple(target for _, target in routes)
        self.default = default
        keyed = [(route, target, _node_key(route)) for route, target in routes]
        methods = {m for route in self.routes for m in route.methods or ()}
        nodes = {node for _, _, key in keyed for node in _ancestors(key)}

        def build(node: str) -> _Node:
            fits = [(r, _Check(r, t, node)) for r, t, key in keyed if node.startswith(key) and
                    (key.endswith("/") or key == node)]
            by_method = {method: _indexed(tuple(c for r, c in fits if r.methods is None or method in r.methods))
                         for method in (*methods, _OTHER)}
            children = {child: build(child) for child in nodes
                        if child != node and child.startswith(node) and _ancestors(child)[-2] == node}
            return len(node), children or None, by_method

        self._root = build("/")

    def match(self, scope: Mapping[str, Any]) -> Target:
        path: str = scope["path"]
        if "//" in path or "/." in path:  # rare: only such paths need routed_path's work
            path = routed_path(path)
        size, children, by_method = self._root
        while children is not None:
            cut = path.find("/", size)
            child = children.get(path[:cut + 1] if cut >= 0 else path)
            if child is None:
                break
            size, children, by_method = child
        candidates = by_method.get(scope["method"])
        if candidates is None:
            candidates = by_method[_OTHER]
        if type(candidates) is _ByHost:
            candidates = candidates.candidates(scope["headers"])
        for check in candidates:  # type: ignore[union-attr]
            if check.always:
                return check.target  # type: ignore[no-any-return]
            if check.exact is not None and path != check.exact:
                continue
            if check.prefix is not None and not path.startswith(check.prefix):
                continue
            if check.headers and not _headers_match(check.headers, scope["headers"]):
                continue
            return check.target  # type: ignore[no-any-return]
        return self.default

    def __len__(self) -> int:
        return len(self.routes)


def routed_path(path: str) -> str:
    """The path routes are matched on: the server's (percent-decoded) path without dot segments and
    with repeated slashes merged (RFC 3986 5.2.4), as a normalising server behind a sidecar serves it.

    Without this, `/public/../api/x` or `//api/x` would miss an `/api/` route's guests and reach an
    upstream that serves `/api/x`. Only the choice of chain uses it: guests and the app see the request
    as it came.
    """
    if "//" not in path and "/." not in path:  # (match checks this itself before calling)
        return path
    segments = path.split("/")
    kept: list[str] = []
    for segment in segments[1:]:
        if segment == "..":
            if kept:
                kept.pop()
        elif segment not in (".", ""):
            kept.append(segment)
    folder = segments[-1] in ("", ".", "..") and bool(kept)  # it names a folder: keep the trailing slash
    return "/" + "/".join(kept) + ("/" if folder else "")


def _indexed(checks: tuple[_Check, ...]) -> tuple[_Check, ...] | _ByHost:
    """The candidates up to the first that always matches (none after it can win), read by host
    only if a host condition comes before it (so most requests never look at the Host header)."""
    first = next((index for index, check in enumerate(checks) if check.always), len(checks))
    checks = checks[:first + 1]
    return _ByHost(checks) if any(check.hosted for check in checks) else checks


def _headers_match(wanted: tuple[tuple[bytes, bytes], ...], headers: Sequence[tuple[bytes, bytes]]) -> bool:
    """Every wanted (name, value) is among the request headers (a repeated header: any of its values)."""
    return all(any(k == name and v == value for k, v in headers) for name, value in wanted)


_native.learn("routes", RouteTable)
