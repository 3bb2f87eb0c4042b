"""The `http-wasm-asgi` command: serve a chain, check a config, inspect a guest."""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
from typing import Any

from .. import _native
from ..abi import feature_names
from ..asgi.routes import Route
from ..errors import GuestError, MissingExtra
from . import serve_options
from .cache_command import add_cache_command
from .config import ChainConfig, ConfigError, load_app, load_config

log = logging.getLogger("http_wasm_asgi")


def _describe(guest: Any, seconds: float | None = None) -> str:
    info = guest.info
    imports = ", ".join(f"{m}.{n}" for m, n, _ in info.imports) or "(none)"
    exports = ", ".join(n for n, _ in info.exports)
    features = feature_names(guest.features)
    lines = [f"guest {guest.name!r}",
             f"  size:      {info.size} bytes (sha256 {info.sha256[:16]})",
             f"  imports:   {imports}",
             f"  exports:   {exports}",
             f"  features at start: {', '.join(features) or 'none'}",
             f"  WASI:      {'yes' if info.uses_wasi else 'no'}",
             f"  compile:   {info.compile_seconds * 1000:.1f} ms ({info.compiled_from})",
             f"  snapshot:  {_snapshot_line(guest.snapshot)}",
             f"  call path: {_path_line(guest)}"]
    if seconds is not None:
        lines.append(f"  ready in:  {seconds * 1000:.1f} ms (compile + first instance)")
    return "\n".join(lines)


def _path_line(guest: Any) -> str:
    if guest.native:  # and how its handle_response is entered (see runs_bounded)
        return "native" + ("; handle_response is one synchronous call (its code cannot loop)"
                           if guest.module.sync_response else "")
    return (f"python: the native path is {_native.status()}; about 2.5x the cost per guest (fix: install a "
            "wheel, or reinstall with a C compiler)")


def _snapshot_line(snapshot: Any) -> str:
    if not snapshot.used:
        return f"no: {snapshot.detail} (each instance runs the guest's init)"
    return (f"yes ({snapshot.detail}): init took {snapshot.init_seconds * 1000:.1f} ms, image "
            f"{snapshot.image_bytes / 2**20:.1f} MiB mapped copy-on-write by every instance")


def cmd_check(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    target = f"app {config.app}" if config.app else f"upstream {config.upstream}"
    print(f"{args.config}: {len(config.guests)} guest(s) in front of {target}")
    if config.app:
        load_app(config)  # the app must import (the upstream is not contacted)
    for index in range(len(config.guests)):
        start = time.perf_counter()
        guest = config.load_guest(index)
        print(_describe(guest, time.perf_counter() - start))
        guest.close()
    _print_routes(config)
    print("ok")
    return 0


def _print_routes(config: ChainConfig) -> None:
    """The route table of a config with `routes:` (first match wins), one line per route."""
    if config.routes is None:
        return
    print("routes (first match wins):")
    width = max((len(spec.key) for spec in config.routes), default=0)
    for spec in config.routes:
        guests = ", ".join(config.guests[i].name for i in spec.guests) or "(no guests: straight to the app)"
        print(f"  {spec.key.ljust(width)}  {Route(**spec.match).describe()}  ->  {guests}")
    print(f"  {'no match'.ljust(width)}  ->  (no guests: straight to the app)")


def _inspect_config(path: str) -> int:
    """`inspect CONFIG`: its guests (name and source) and its route table, without loading them."""
    config = load_config(path)
    print(f"{path}: {len(config.guests)} guest(s)")
    for spec in config.guests:
        where = f"{spec.source} (cached: {spec.path})" if spec.source else str(spec.path)
        print(f"  guest {spec.name!r}: {where}")
    _print_routes(config)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from ..guest import Guest

    if args.guest.lower().endswith((".yaml", ".yml", ".toml")):
        return _inspect_config(args.guest)
    start = time.perf_counter()
    guest = Guest(args.guest, config=args.guest_config.encode() if args.guest_config else None)
    print(_describe(guest, time.perf_counter() - start))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from . import serving

    config = load_config(args.config)
    try:
        options, given = serve_options.resolve(args, config)
    except serve_options.UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    problem = serve_options.server_problem(options, given)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    serving.setup_logging(options.log_level, options.log_format)
    if args.reload_deprecated:
        log.warning("--reload is deprecated: it is --watch now (the config and guest watcher, not a code "
                    "reloader); SIGHUP reloads as before")
    return serving.serve(options, config)


def cmd_push(args: argparse.Namespace) -> int:
    """`push GUEST.wasm oci://registry/repo:tag`: publish a module as a wasm artifact, print how to pin it."""
    from . import oci

    try:
        reference = oci.Reference.parse(args.reference)
        wasm = open(args.guest, "rb").read()  # noqa: SIM115
    except (ValueError, OSError) as exc:
        print(f"error: {getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
        return 2
    if reference.digest or not reference.tag:
        print("error: push to a tag (oci://registry/repo:tag); the digest is the result", file=sys.stderr)
        return 2
    plain = oci.plain_http_allowed(reference.registry, args.insecure)
    try:
        with oci.Registry(reference.registry, plain_http=plain) as registry:
            manifest = oci.push_wasm(wasm, reference, registry, title=os.path.basename(args.guest))
    except oci.OciError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    name = f"{reference.registry}/{reference.repository}"
    print(f"pushed {args.guest} ({len(wasm)} bytes) to {reference}\n"
          f"manifest: {manifest}\n"
          f"pin it in a config (either form):\n"
          f"  oci: {name}@{manifest}\n"
          f"  oci: {reference}\n  sha256: {oci.sha256_digest(wasm).removeprefix('sha256:')}")
    return 0


def _add_push(sub: Any, debug: argparse.ArgumentParser) -> None:
    push = sub.add_parser(
        "push", parents=[debug], help="publish a guest module to an OCI registry",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_EPILOG,
        description="Push GUEST (a .wasm module) to REFERENCE as a wasm artifact (a config of media type\n"
        "application/vnd.wasm.config.v1+json, one layer of application/vnd.wasm.content.layer.v1+wasm)\n"
        "and print the digests to pin it by. Credentials: HTTP_WASM_ASGI_REGISTRY_USER and _PASSWORD,\n"
        "else the docker config file ($DOCKER_CONFIG/config.json, ~/.docker/config.json).\n\n"
        "example: http-wasm-asgi push guests/zig/auth.wasm oci://ghcr.io/me/auth:1.0")
    push.add_argument("guest", help=".wasm file")
    push.add_argument("reference", help="oci://registry/repository:tag")
    push.add_argument("--insecure", action="store_true",
                      help="plain http to a registry that is not on loopback (loopback always uses http)")
    push.set_defaults(func=cmd_push)


def cmd_conformance(args: argparse.Namespace) -> int:
    from ..devkit import conformance

    try:
        cases = conformance.select(args.case)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    width = max(len(case.id) for case in cases)

    def show(result: conformance.CaseResult) -> None:
        verdict = "pass" if result.passed else "FAIL"
        problems = "" if result.passed else "  " + "; ".join(result.problems)
        print(f"{verdict}  {result.case_id.ljust(width)}{problems}".rstrip(), flush=True)

    results = conformance.run(args.guest, [case.id for case in cases], on_result=show)
    failed = sum(not result.passed for result in results)
    print(f"{len(results) - failed} of {len(results)} cases passed" + (f", {failed} failed" if failed else ""))
    return 1 if failed else 0


def _request(args: argparse.Namespace) -> Any:
    """The request after `--` (default GET /), or None after printing what is wrong with it."""
    from ..devkit.devtools import parse_request

    try:
        return parse_request(args.request)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def cmd_trace(args: argparse.Namespace) -> int:
    from ..devkit.devtools import trace

    request = _request(args)
    if request is None:
        return 2
    text, result = trace(args.guest, args.guest_config, request)
    print(text)
    return 1 if result.trapped else 0


def cmd_bench(args: argparse.Namespace) -> int:
    from ..devkit.devtools import bench, trace

    request = _request(args)
    if request is None:
        return 2
    _, result = trace(args.guest, args.guest_config, request)  # the request as the guest answers it, once
    if result.trapped:
        print(f"error: the request traps, nothing to measure: {result.traps[0]} (see: http-wasm-asgi trace)",
              file=sys.stderr)
        return 1
    cost = bench(args.guest, args.guest_config, request, requests=args.requests, rounds=args.rounds)
    print(f"{args.guest}: {request.method} {request.target}, in-process, against the app alone")
    print(cost.report())
    return 0


_positive = serve_options.positive


_EPILOG = """exit status: 0 ok, 2 a bad config, guest or command line, other non-zero values otherwise.
Errors print one line naming the file, the key (e.g. guests[1].path) and the fix; --debug adds the
Python traceback. Compiled guests are cached in $HTTP_WASM_ASGI_CACHE_DIR (default
~/.cache/http-wasm-asgi; empty turns the cache off)."""


def _add_serve(sub: Any, debug: argparse.ArgumentParser) -> None:
    serve = sub.add_parser(
        "serve", parents=[debug], help="serve a chain (config file) on uvicorn (or Hypercorn)",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=serve_options.PRECEDENCE + "\n\n" + _EPILOG,
        description="Serve the app (or upstream) of CONFIG behind its guest chain on uvicorn.\n"
        "Flags override the config's server: section. Each of --workers N processes loads the chain;\n"
        "guests are compiled once, before the workers start, and reused from the disk cache.\n\n"
        "example: http-wasm-asgi serve examples/chain.yaml --port 8080 --workers 2")
    serve.add_argument("config", help="chain config file (.yaml, .yml or .toml)")
    serve_options.add_flags(serve)
    serve.set_defaults(func=cmd_serve)


class _Version(argparse.Action):
    """`--version`: the package, wasmtime and the native path (computed only when asked)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        from ..registry import package_version
        from ..wasm.capi import wasmtime_version

        print(f"http-wasm-asgi {package_version()} (wasmtime {wasmtime_version()}; native path "
              f"{_native.status()}; {platform.python_implementation()} {platform.python_version()} on "
              f"{platform.system()})")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="http-wasm-asgi", description="Run chains of http-wasm guests (WebAssembly HTTP middleware) in front "
        "of an ASGI app or, as a sidecar, in front of an HTTP service.", epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    parser.add_argument("--version", action=_Version,
                        help="print the versions of http-wasm-asgi, wasmtime and Python, and whether the native "
                        "call path is on, then exit")
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the Python traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_serve(sub, debug)
    _add_push(sub, debug)
    check = sub.add_parser(
        "check", parents=[debug], help="load, compile and instantiate every guest of a config",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_EPILOG,
        description="Validate CONFIG, import its app, and compile and instantiate every guest in it.\n"
        "Prints per guest: size, imports, exports, features enabled at start, WASI yes/no and\n"
        "compile time, and whether instances start from a snapshot taken after init; then the route\n"
        "table, if the config has routes. Guests from url:/oci: are fetched (or taken from the cache).\n"
        "Exits non-zero on any problem (the upstream, if any, is not contacted).")
    check.add_argument("config", help="chain config file (.yaml, .yml or .toml)")
    check.set_defaults(func=cmd_check)
    inspect = sub.add_parser(
        "inspect", parents=[debug], help="describe one guest module",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_EPILOG,
        description="Compile and instantiate GUEST; print its size, imports, exports, features enabled\n"
        "at start, WASI yes/no and compile time, and whether instances start from a snapshot taken\n"
        "after init. Exits non-zero if it is not a usable guest. Given a config file (.yaml, .yml,\n"
        ".toml) instead, prints its guests and its route table.")
    inspect.add_argument("guest", help=".wasm (or .wat) file, or a config file")
    inspect.add_argument("--config", dest="guest_config", metavar="TEXT",
                         help="config given to the guest (its get_config), as text")
    inspect.set_defaults(func=cmd_inspect)
    conform = sub.add_parser(
        "conformance", parents=[debug], help="run the http-wasm conformance cases against a conformance guest",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_EPILOG,
        description="Serve GUEST (a conformance guest, e.g. guests/go/conformance/conformance.wasm) in front of\n"
        "an echo app on uvicorn (127.0.0.1, a free port), send every conformance case and check the\n"
        "guest's verdict and the response. Prints one line per case; exits 1 if any case fails.")
    conform.add_argument("guest", help="conformance guest .wasm file")
    conform.add_argument("--case", action="append", metavar="ID",
                         help="run only this case (repeatable), e.g. --case get_uri/encoded")
    conform.set_defaults(func=cmd_conformance)
    _add_guest_tools(sub, debug)
    add_cache_command(sub, debug)
    return parser


_REQUEST_HELP = """the request, after --: METHOD URL [-H 'name: value']... [-d BODY | -d @FILE]; URL is a path
(/a?b=1) or http://host/path (its host is the host header); default: GET /"""


def _add_guest_tools(sub: Any, debug: argparse.ArgumentParser) -> None:
    """`trace` and `bench`: a guest author's tools (http_wasm_asgi.devkit.devtools)."""
    trace = sub.add_parser(
        "trace", parents=[debug], help="one request through a guest, with every host call it made",
        usage="http-wasm-asgi trace GUEST [--config TEXT] [-- METHOD URL [-H 'k: v']... [-d BODY]]",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_REQUEST_HELP,
        description="Send one request through GUEST in front of an echo app (in-process) and print what the\n"
        "client sent and got, what the app saw, the guest's log lines, whether it trapped, and every host\n"
        "function call (arguments decoded, result, time). Exits 1 if the guest trapped.\n\n"
        "example: http-wasm-asgi trace guests/zig/auth.wasm --config s3cret -- GET /x \\\n"
        "             -H 'authorization: Bearer s3cret'")
    bench = sub.add_parser(
        "bench", parents=[debug], help="what a guest adds to a request (median us) and its memory per instance",
        usage="http-wasm-asgi bench GUEST [--config TEXT] [--requests N] [-- METHOD URL [-H 'k: v']... [-d BODY]]",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_REQUEST_HELP,
        description="Time the request in-process (as bench/run.py does) through GUEST in front of a minimal app\n"
        "and through the app alone, in interleaved rounds; print the medians and the guest's added cost per\n"
        "request, then the linear memory and RSS per instance (32 new instances).")
    for parser in (trace, bench):
        parser.add_argument("guest", help=".wasm (or .wat) file")
        parser.add_argument("--config", dest="guest_config", metavar="TEXT", help="the guest's config, as text")
        parser.set_defaults(request=[])
    bench.add_argument("--requests", type=_positive, default=20000, help="timed requests per variant (20000)")
    bench.add_argument("--rounds", type=_positive, default=10, help="interleaved rounds (10)")
    trace.set_defaults(func=cmd_trace)
    bench.set_defaults(func=cmd_bench)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line; for `trace` and `bench`, what follows `--` is the request (any dashes in it too)."""
    parser = build_parser()
    if "--" in argv:
        cut = argv.index("--")
        args = parser.parse_args(argv[:cut])
        if hasattr(args, "request"):
            args.request = argv[cut + 1:]
            return args
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else list(argv))
    try:
        status = int(args.func(args))
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return status
    except (ConfigError, GuestError, MissingExtra) as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `http-wasm-asgi check x.yaml | head`: the reader left, nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as exc:
        if args.debug:
            raise
        print(f"error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
