"""`serve`'s flags: each also read from the environment as HTTP_WASM_ASGI_<FLAG> (`--port` is
HTTP_WASM_ASGI_PORT), and resolved as flag > environment > config file > default. Most are uvicorn's own
operator flags, passed through to it; on Hypercorn the ones it has are passed on, the others refused.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from .config import LOG_LEVELS, ChainConfig
from .logs import LOG_FORMATS

if TYPE_CHECKING:
    from .serving import ServeOptions

ENV_PREFIX: Final = "HTTP_WASM_ASGI_"
_TRUE: Final = ("1", "true", "yes", "on")
_FALSE: Final = ("0", "false", "no", "off")


class UsageError(ValueError):
    """A flag or variable `serve` cannot use: one line, exit 2."""


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of 1 or more, got {text!r}")
    return value


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds greater than 0, got {text!r}")
    return value


def port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"must be a port number (0-65535), got {text!r}")
    return int(text)


def url(text: str) -> str:
    if not re.match(r"https?://[^/\s]+|unix:/\S+", text):
        raise argparse.ArgumentTypeError(f"must be an http:// or https:// URL or unix:/path.sock, got {text!r}")
    return text


def _choice(choices: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text.lower() not in choices:
            raise argparse.ArgumentTypeError(f"must be one of {', '.join(choices)}, got {text!r}")
        return text.lower()
    return parse


def switch(text: str) -> bool:
    """An on/off variable: 1/true/yes/on or 0/false/no/off."""
    if text.strip().lower() in _TRUE:
        return True
    if text.strip().lower() in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"must be one of {'/'.join(_TRUE)} or {'/'.join(_FALSE)}, got {text!r}")


@dataclasses.dataclass(frozen=True)
class Flag:
    """One `serve` flag: how it reads, its variable, the config key it overrides, its default, and whether
    Hypercorn honours it."""

    names: tuple[str, ...]
    help: str
    parse: Callable[[str], Any] | None = None  # None: on/off (a switch)
    default: Any = None
    key: str = ""  # the config key it overrides, as written in the file
    metavar: str | None = None
    negatable: bool = False  # --no-X too
    hypercorn: bool = True

    @property
    def dest(self) -> str:
        return self.names[0].removeprefix("--").replace("-", "_")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.dest.upper()

    def describe(self) -> str:
        where = [f"env {self.env}"] + ([f"overrides {self.key}"] if self.key else [])
        if isinstance(self.default, bool):
            shown = "on" if self.default else "off"
        else:
            shown = {None: "none", "": "''"}.get(self.default, f"{self.default:g}" if isinstance(self.default, float)
                                                 else str(self.default))
        only = "" if self.hypercorn else " (uvicorn only)"
        return f"{self.help}{only} [{'; '.join(where)}; default {shown}]"


FLAGS: Final = (
    Flag(("--host",), "bind address", str, "127.0.0.1", "server.host"),
    Flag(("--port",), "port", port, 8080, "server.port"),
    Flag(("--uds",), "bind to this Unix socket instead of --host/--port", str, None, metavar="PATH"),
    Flag(("--workers",), "worker processes, each loading the chain (uvicorn)", positive, 1, "server.workers",
         metavar="N"),
    Flag(("--log-level",), f"uvicorn, host and guest log level ({', '.join(LOG_LEVELS)})", _choice(LOG_LEVELS),
         "info", "log_level", metavar="{" + ",".join(LOG_LEVELS) + "}"),
    Flag(("--log-format",), "text, or json: one JSON object per line (time, level, logger, message, guest)",
         _choice(LOG_FORMATS), "text", metavar="FORMAT"),
    Flag(("--access-log",), "the access log (one line per request)", None, True, negatable=True),
    Flag(("--upstream",), "proxy to this HTTP service (http(s)://host:port or unix:/path.sock) instead of the "
         "config's app or upstream (sidecar mode)", url, None, metavar="URL"),
    Flag(("--forwarded-allow-ips",), "comma-separated addresses (or *) whose X-Forwarded-For/-Proto are "
         "trusted; uvicorn's default: $FORWARDED_ALLOW_IPS, else 127.0.0.1", str, None, metavar="IPS",
         hypercorn=False),
    Flag(("--proxy-headers",), "take the client address and scheme from X-Forwarded-For/-Proto (from "
         "--forwarded-allow-ips)", None, True, negatable=True, hypercorn=False),
    Flag(("--root-path",), "the ASGI root_path: the prefix a proxy mounts the app under", str, "",
         metavar="PATH"),
    Flag(("--timeout-keep-alive",), "close an idle keep-alive connection after this many seconds", positive, 5,
         metavar="SECONDS"),
    Flag(("--limit-concurrency",), "answer 503 beyond this many connections and tasks at once", positive, None,
         metavar="N", hypercorn=False),
    Flag(("--ssl-certfile", "--certfile"), "TLS certificate (chain); with --ssl-keyfile, serve HTTPS", str, None,
         metavar="PEM"),
    Flag(("--ssl-keyfile", "--keyfile"), "TLS private key", str, None, metavar="PEM"),
    Flag(("--http2",), "HTTP/2 on uvicorn (its zttp protocol: pip install 'http-wasm-asgi[servers]'): by ALPN "
         "over TLS, by prior knowledge (h2c) in the clear; Hypercorn always has it", None, False),
    Flag(("--server",), "the ASGI server: uvicorn or hypercorn (one process; pip install "
         "'http-wasm-asgi[servers]')", _choice(("uvicorn", "hypercorn")), "uvicorn", metavar="NAME"),
    Flag(("--metrics-port",), "serve /metrics (Prometheus), /healthz and /readyz on this port, a listener of "
         "its own", port, None, "metrics.port", metavar="PORT"),
    Flag(("--metrics-host",), "bind address of the metrics listener (none: --host)", str, None, "metrics.host",
         metavar="HOST"),
    Flag(("--watch",), "reload the chain when the config file or a guest file changes (SIGHUP always does; "
         "this is no code reloader)", None, False),
    Flag(("--shutdown-timeout",), "after SIGTERM, how long requests in flight may take before they are "
         "cancelled", seconds, 30.0, "server.shutdown_timeout", metavar="SECONDS"),
)
_CONFIG: Final = {"host": "host", "port": "port", "workers": "workers", "log_level": "log_level",
                  "metrics_port": "metrics_port", "metrics_host": "metrics_host",
                  "shutdown_timeout": "shutdown_timeout"}  # flag -> ChainConfig attribute


def add_flags(serve: argparse.ArgumentParser) -> None:
    """Every flag, with `None` as its parsed default (so `resolve` sees what was given)."""
    for flag in FLAGS:
        options: dict[str, Any] = {"dest": flag.dest, "default": None, "help": flag.describe().replace("%", "%%")}
        if flag.parse is None:
            options["action"] = argparse.BooleanOptionalAction if flag.negatable else "store_true"
        else:
            options.update(type=flag.parse, metavar=flag.metavar)
        serve.add_argument(*flag.names, **options)
    serve.add_argument("--reload", action="store_true", dest="reload_deprecated",
                       help="deprecated spelling of --watch (logs a warning)")


def resolve(args: argparse.Namespace, config: ChainConfig,
            environ: dict[str, str] | None = None) -> tuple[ServeOptions, set[str]]:
    """The serve options (flag > environment > config file > default), and the flags given by flag or variable.
    Raises UsageError for a variable that does not parse."""
    from .serving import ServeOptions

    environ = dict(os.environ) if environ is None else environ
    values: dict[str, Any] = {}
    given: set[str] = set()
    for flag in FLAGS:
        value = getattr(args, flag.dest, None)
        if value is None and environ.get(flag.env, "") != "":
            value = _from_env(flag, environ[flag.env])
        if value is not None:
            given.add(flag.dest)
        elif flag.dest in _CONFIG:
            value = getattr(config, _CONFIG[flag.dest])
        values[flag.dest] = flag.default if value is None else value
    if getattr(args, "reload_deprecated", False):
        values["watch"] = True
        given.add("watch")
    values["metrics_host"] = values["metrics_host"] or values["host"]
    values["certfile"], values["keyfile"] = values.pop("ssl_certfile"), values.pop("ssl_keyfile")
    return ServeOptions(config=os.path.abspath(args.config), **values), given


def _from_env(flag: Flag, text: str) -> Any:
    try:
        return (flag.parse or switch)(text)
    except argparse.ArgumentTypeError as exc:
        raise UsageError(f"{flag.env}: {exc}") from None


def server_problem(options: ServeOptions, given: set[str]) -> str | None:
    """What keeps `serve` from running on the server asked for, if anything (one line)."""
    if options.keyfile and not options.certfile:
        return "--ssl-keyfile needs --ssl-certfile (the certificate it is the key of)"
    missing = [path for path in (options.certfile, options.keyfile) if path and not os.path.isfile(path)]
    if missing:
        return f"file {missing[0]!r} not found (--ssl-certfile/--ssl-keyfile)"
    if options.server != "hypercorn":
        return _zttp_problem() if options.http2 else None
    refused = [flag for flag in FLAGS if not flag.hypercorn and flag.dest in given]
    if refused:
        return (f"--server hypercorn has no {refused[0].names[0]} (uvicorn's); fix: leave it out (and "
                f"{refused[0].env}), or serve on uvicorn")
    if options.certfile and not options.keyfile:
        return "--server hypercorn: give both --ssl-certfile and --ssl-keyfile, or neither"
    if options.workers > 1:
        return (f"--server hypercorn: {options.workers} workers need the default server, uvicorn (Hypercorn runs "
                "in one process here); fix: leave out --workers (and the config's server.workers), or run "
                "hypercorn yourself (README, 'ASGI servers')")
    try:
        import hypercorn  # noqa: F401
    except ImportError:
        return "Hypercorn is not installed; fix: pip install 'http-wasm-asgi[servers]' (or hypercorn)"
    return None


def _zttp_problem() -> str | None:
    try:
        import zttp  # noqa: F401
    except ImportError:
        return "--http2 on uvicorn needs zttp; fix: pip install 'http-wasm-asgi[servers]' (or zttp)"
    return None


PRECEDENCE: Final = """Every flag can come from the environment too, as HTTP_WASM_ASGI_ and the flag's name in capitals
with '_' for '-' (--port: HTTP_WASM_ASGI_PORT=9000; an on/off flag: 1/true/yes/on or 0/false/no/off).
Precedence: flag > environment > config file (its server:, metrics: and log_level keys) > default."""
