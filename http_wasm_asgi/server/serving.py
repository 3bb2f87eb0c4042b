"""What `serve` runs: the chain on uvicorn, with its metrics listener, reloads and a graceful shutdown.

- One process (`--workers 1`): the app's server and the metrics listener share one event loop, so a
  scrape reads the pools on the thread that uses them.
- `--workers N`: uvicorn's supervisor starts the workers, each loading the chain; the serve process
  alone listens for scrapes and adds up what the workers publish (`metrics.WorkerFiles`). SIGHUP is
  passed on to every worker (uvicorn's own supervisor would restart them instead).
- Reload: SIGHUP, or a change of the config file or a guest file with `--watch` (watchfiles), makes
  each serving process build the new chain off its event loop and swap it in (`config.reload_config`).
- SIGTERM: stop accepting, let requests in flight finish (at most `shutdown_timeout`), close every
  pool, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, Final

from .. import _native
from ..asgi.middleware import HttpWasmMiddleware
from ..asgi.types import Message, Receive, Scope, Send
from ..errors import MissingExtra
from . import logs, sources
from .config import ChainConfig, ConfigError, build_middleware, load_config, reload_config
from .logs import setup_logging as setup_logging

try:
    import uvicorn
    from uvicorn.config import LOGGING_CONFIG
    from uvicorn.supervisors.multiprocess import Multiprocess
except ImportError as exc:
    raise MissingExtra("the serve command", "standard", exc) from None

log = logging.getLogger("http_wasm_asgi")
_ENV_OPTIONS = "HTTP_WASM_ASGI_SERVE"  # the serve options, for the worker processes (JSON)
_ENV_METRICS_DIR = "HTTP_WASM_ASGI_METRICS_DIR"  # where workers publish their figures
_ENV_SUPERVISOR = "HTTP_WASM_ASGI_SUPERVISOR_PID"  # the process a worker follows
SUPERVISOR_POLL_SECONDS: Final = 0.5  # how often a worker checks that its supervisor lives
WATCH_DEBOUNCE_MS = 100
_early_hups: list[int] = []  # SIGHUPs that came before the chain served (they reload it once it does)


@dataclasses.dataclass
class ServeOptions:
    config: str
    upstream: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    log_level: str = "info"
    shutdown_timeout: float = 30.0
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None
    watch: bool = False  # reload on a change of the config file or a guest file
    server: str = "uvicorn"  # or "hypercorn" (one process; with certfile and keyfile: TLS, HTTP/2)
    certfile: str | None = None
    keyfile: str | None = None
    # uvicorn's operator settings (serve_options.FLAGS says which Hypercorn has)
    uds: str | None = None
    log_format: str = "text"  # or "json"
    access_log: bool = True
    forwarded_allow_ips: str | None = None
    proxy_headers: bool = True
    root_path: str = ""
    timeout_keep_alive: int = 5
    limit_concurrency: int | None = None
    http2: bool = False  # uvicorn: its zttp protocol, HTTP/2 by ALPN (TLS) or prior knowledge (h2c)


def uvicorn_settings(options: ServeOptions) -> dict[str, Any]:
    """The uvicorn.Config keywords of the app's server (one process, or every worker of `--workers N`)."""
    settings: dict[str, Any] = dict(
        host=options.host, port=options.port, uds=options.uds, log_level=options.log_level,
        timeout_graceful_shutdown=math.ceil(options.shutdown_timeout), access_log=options.access_log,
        forwarded_allow_ips=options.forwarded_allow_ips, proxy_headers=options.proxy_headers,
        root_path=options.root_path, timeout_keep_alive=options.timeout_keep_alive,
        limit_concurrency=options.limit_concurrency, ssl_certfile=options.certfile, ssl_keyfile=options.keyfile,
        log_config=_log_config(options))
    if options.http2:
        settings.update(_http2_protocol())
    return settings


def _http2_protocol() -> dict[str, Any]:
    """uvicorn's zttp protocol, with the fix of `uvicorn_h2` where this uvicorn has the modules it fixes."""
    try:
        from .uvicorn_h2 import PROTOCOL
    except ImportError:
        return {"http": "zttp", "http2": True}
    return {"http": PROTOCOL}


def _log_config(options: ServeOptions) -> dict[str, Any]:
    return logs.json_log_config() if options.log_format == "json" else LOGGING_CONFIG


def load_chain(path: str, upstream: str | None,
               config: ChainConfig | None = None) -> tuple[ChainConfig, HttpWasmMiddleware]:
    """The middleware for `serve`: the config's chain in front of its app, its upstream, or `upstream`
    (`config`: the file already loaded, so its url/oci guests are not fetched twice)."""
    config = config or load_config(path)
    if upstream:
        config.app, config.upstream = None, upstream
    middleware = build_middleware(config)
    _log_chain(config, middleware, "chain loaded")
    return config, middleware


def _log_chain(config: ChainConfig, middleware: HttpWasmMiddleware, what: str) -> None:
    target = f"app {config.app}" if config.app else f"upstream {config.upstream}"
    guests = ", ".join(f"{g.name} ({g.info.compiled_from} in {g.info.compile_seconds * 1000:.1f} ms)"
                       for g in middleware.all_guests) or "no guests"
    log.info("process %d: %s in front of %s: %s; native path %s", os.getpid(), what, target, guests,
             _native.status())


def _early_hup(signum: int, _frame: Any) -> None:
    _early_hups.append(signum)


class ServedChain:
    """The ASGI app a serving process runs: the chain, plus the process's own work around its lifespan.

    At startup SIGHUP starts reloading the chain (and a worker of `--workers N` starts publishing its
    figures); at shutdown, once uvicorn has let the requests in flight end, every pool is closed.
    """

    def __init__(self, config: ChainConfig, middleware: HttpWasmMiddleware, options: ServeOptions,
                 metrics_dir: Path | None) -> None:
        self.middleware = middleware
        self.options = options
        self.target = (config.app, config.upstream)  # what it serves: a reload keeps it
        self.metrics_dir = metrics_dir
        self.ready = False  # the chain is loaded and the lifespan started; False again once shutting down
        self._reload_task: asyncio.Task[None] | None = None
        self._again = False
        self._publisher: asyncio.Task[None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
        else:
            await self.middleware(scope, receive, send)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Our startup and shutdown around the app's own (if it has a lifespan: many apps do not)."""
        to_app: asyncio.Queue[Message] = asyncio.Queue()
        from_app: asyncio.Queue[Message] = asyncio.Queue()
        app = asyncio.ensure_future(self.middleware(scope, to_app.get, from_app.put))
        try:
            for phase in ("startup", "shutdown"):
                message = await receive()
                if phase == "shutdown":
                    self.ready = False
                reply: Message = {"type": f"lifespan.{phase}.complete"}
                if not app.done():
                    to_app.put_nowait(message)
                    reply = await _reply(from_app, app) or reply
                if reply["type"].endswith(".failed"):
                    await send(reply)
                    return
                if phase == "startup":
                    self._started()
                else:
                    self._stopped()
                await send(reply)
        finally:
            app.cancel()

    def _started(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        if self.metrics_dir is not None:
            self._publisher = loop.create_task(self._publish())
        self.ready = True
        if _early_hups:
            _early_hups.clear()
            self.request_reload()

    def _stopped(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        for task in (self._publisher, self._reload_task):
            if task is not None:
                task.cancel()
        if self.metrics_dir is not None:
            from . import metrics

            with contextlib.suppress(OSError):
                metrics.publish(self.metrics_dir, ready=False, stopped=True)
        count = len(self.middleware.all_guests)
        self.middleware.close()
        log.info("process %d: chain closed (%d guests), exiting", os.getpid(), count)

    async def _publish(self) -> None:
        from . import metrics

        assert self.metrics_dir is not None
        while True:
            with contextlib.suppress(OSError):
                metrics.publish(self.metrics_dir, ready=self.ready)
            await asyncio.sleep(metrics.PUBLISH_SECONDS)

    # -- reloads --
    def request_reload(self) -> None:
        """SIGHUP: reload now, or once more after the reload under way (it may have read the file too early)."""
        if self._reload_task is not None and not self._reload_task.done():
            self._again = True
            return
        self._reload_task = asyncio.get_running_loop().create_task(self._reload())

    async def _reload(self) -> None:
        while True:
            self._again = False
            start = time.perf_counter()
            try:
                config = await reload_config(self.middleware, self.options.config)
            except ConfigError as exc:
                log.error("process %d: reload failed, the previous chain keeps serving: %s", os.getpid(), exc)
            except Exception as exc:
                log.error("process %d: reload of %s failed, the previous chain keeps serving: %s: %s",
                          os.getpid(), self.options.config, type(exc).__name__, exc)
            else:
                self._log_reload(config, time.perf_counter() - start)
            if not self._again:
                return

    def _log_reload(self, config: ChainConfig, seconds: float) -> None:
        if self.options.upstream:
            config.app, config.upstream = None, self.options.upstream
        _log_chain(config, self.middleware, f"chain reloaded in {seconds * 1000:.0f} ms")
        if (config.app, config.upstream) != self.target:
            log.warning("process %d: %s: a changed app or upstream takes a restart; the guests were reloaded",
                        os.getpid(), self.options.config)


async def _reply(from_app: asyncio.Queue[Message], app: asyncio.Future[None]) -> Message | None:
    """The app's answer to a lifespan message; None when its lifespan ended (or it has none)."""
    getter = asyncio.ensure_future(from_app.get())
    waits: list[asyncio.Future[Any]] = [getter, app]
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    if getter.done():
        return getter.result()
    getter.cancel()
    if not app.cancelled() and app.exception() is not None:
        log.debug("the app has no lifespan: %r", app.exception())
    return None


# -- running it --
def serve(options: ServeOptions, config: ChainConfig | None = None) -> int:
    """Load the chain (a bad guest or app fails here, before anything binds), then serve it."""
    signal.signal(signal.SIGHUP, _early_hup)
    config, middleware = load_chain(options.config, options.upstream, config)
    if options.server == "hypercorn":
        return _serve_on_hypercorn(options, config, middleware)
    if options.workers == 1:
        return _serve_one(options, config, middleware)
    middleware.close()  # each worker loads its own (from the compile cache this load filled)
    return _serve_workers(options, config)


def _serve_one(options: ServeOptions, config: ChainConfig, middleware: HttpWasmMiddleware) -> int:
    served = ServedChain(config, middleware, options, None)
    server = uvicorn.Server(uvicorn.Config(served, **uvicorn_settings(options)))
    # uvicorn raises the signal it shut down for again once done: SIGTERM then ends here, with status 0
    signal.signal(signal.SIGTERM, lambda *_: None)
    with asyncio.Runner(loop_factory=server.config.get_loop_factory()) as runner:
        runner.run(_run_one(server, served, options))
    return 0


async def _run_one(server: uvicorn.Server, served: ServedChain, options: ServeOptions) -> None:
    async with _beside_the_server(served, options, lambda: server.started and not server.should_exit):
        await server.serve()


def _serve_on_hypercorn(options: ServeOptions, config: ChainConfig, middleware: HttpWasmMiddleware) -> int:
    """`serve --server hypercorn`: the chain on Hypercorn in this one process (over TLS: HTTP/2 and
    HTTP/1.1), with the metrics listener, SIGHUP, `--watch` and SIGTERM as on uvicorn."""
    from hypercorn.config import Config as HypercornConfig

    served = ServedChain(config, middleware, options, None)
    hypercorn = HypercornConfig()
    hypercorn.bind = [f"unix:{options.uds}" if options.uds else f"{options.host}:{options.port}"]
    hypercorn.certfile, hypercorn.keyfile = options.certfile, options.keyfile
    hypercorn.root_path, hypercorn.keep_alive_timeout = options.root_path, options.timeout_keep_alive
    hypercorn.loglevel = "DEBUG" if options.log_level == "trace" else options.log_level.upper()
    access = options.access_log and options.log_level in ("info", "debug", "trace")
    hypercorn.accesslog = "-" if access else None
    if options.log_format == "json":
        hypercorn.errorlog = logs.json_logger("hypercorn.error", hypercorn.loglevel)
        hypercorn.accesslog = logs.json_logger("hypercorn.access", "INFO", sys.stdout) if access else None
    hypercorn.graceful_timeout = options.shutdown_timeout
    try:
        asyncio.run(_run_on_hypercorn(served, hypercorn, options))
    finally:
        middleware.close()  # the lifespan's shutdown closed it, unless the server never got that far
    return 0


async def _run_on_hypercorn(served: ServedChain, hypercorn: Any, options: ServeOptions) -> None:
    from hypercorn.asyncio import serve as hypercorn_serve

    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    async with _beside_the_server(served, options, lambda: not stop.is_set()):
        await hypercorn_serve(served, hypercorn, shutdown_trigger=stop.wait)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def _beside_the_server(served: ServedChain, options: ServeOptions,
                             serving: Callable[[], bool]) -> AsyncIterator[None]:
    """What one serving process runs beside its ASGI server: the metrics listener (ready while the chain
    is and `serving()`) and the `--watch` watcher."""
    listener = None
    if options.metrics_port is not None:
        from . import metrics

        listener = _Listener(metrics.MetricsApp(metrics.registry(), lambda: served.ready and serving()), options)
        await listener.start()
    try:
        with _watching(options):
            yield
    finally:
        if listener is not None:
            await listener.stop()


def worker_app() -> ServedChain:
    """uvicorn factory for `serve --workers N`: each worker process loads the chain itself."""
    options = ServeOptions(**json.loads(os.environ[_ENV_OPTIONS]))
    setup_logging(options.log_level, options.log_format)
    signal.signal(signal.SIGHUP, _early_hup)
    _follow_the_supervisor()
    config, middleware = load_chain(options.config, options.upstream)
    folder = os.environ.get(_ENV_METRICS_DIR)
    return ServedChain(config, middleware, options, Path(folder) if folder else None)


def _follow_the_supervisor() -> None:
    """A worker stops when its supervisor is gone, however it died (SIGKILL too): it would go on holding the
    port with no one to restart, reload or stop it. The worker polls its parent, then drains as on SIGTERM.
    (Linux's parent-death signal follows the *thread* that started the worker, and the supervisor starts
    workers from more than one.)"""
    parent = int(os.environ.get(_ENV_SUPERVISOR, os.getppid()))  # it may have died before this ran

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(SUPERVISOR_POLL_SECONDS)
        log.warning("process %d: the supervisor (process %d) is gone: draining and stopping", os.getpid(), parent)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True, name="http-wasm-asgi-supervisor-watch").start()


def _serve_workers(options: ServeOptions, loaded: ChainConfig) -> int:
    with tempfile.TemporaryDirectory(prefix="http-wasm-asgi-metrics-") as folder:
        os.environ[_ENV_OPTIONS] = json.dumps(dataclasses.asdict(options))
        os.environ[_ENV_SUPERVISOR] = str(os.getpid())
        os.environ[_ENV_METRICS_DIR] = folder if options.metrics_port is not None else ""
        pins = Path(folder) / "sources" / "pins.json"  # url/oci guests: the modules this process loaded
        sources.follow_pins = False
        sources.write_pins(pins, loaded.source_pins())
        os.environ[sources.PINS_ENV] = str(pins)
        config = uvicorn.Config("http_wasm_asgi.server.serving:worker_app", factory=True, workers=options.workers,
                                **uvicorn_settings(options))
        sock = config.bind_socket()
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            # uvicorn binds this socket with protocol 0, and asyncio turns TCP_NODELAY on only for
            # IPPROTO_TCP: without it Nagle's algorithm holds each response body until the client's
            # delayed ACK, ~40 ms per keep-alive request (uvicorn issue #3149). Accepted sockets
            # inherit the option from the listener (Linux).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        supervisor = _Supervisor(config, [sock], options, pins)
        with _worker_metrics(options, Path(folder), supervisor), _watching(options):
            supervisor.run()
    return 0


@contextlib.contextmanager
def _worker_metrics(options: ServeOptions, folder: Path, supervisor: _Supervisor) -> Iterator[None]:
    """The serve process's metrics listener (a thread): what the workers published, added up."""
    if options.metrics_port is None:
        yield
        return
    from . import metrics

    files = metrics.WorkerFiles(folder)
    app = metrics.MetricsApp(metrics.registry(files), lambda: not supervisor.should_exit.is_set()
                             and files.ready(len(supervisor.processes)))
    listener = _Listener(app, options)
    thread = threading.Thread(target=asyncio.run, args=(listener.run_until_stopped(),), daemon=True,
                              name="http-wasm-asgi-metrics")
    thread.start()
    try:
        yield
    finally:
        listener.server.should_exit = True
        thread.join(5)


@contextlib.contextmanager
def _watching(options: ServeOptions) -> Iterator[None]:
    watcher = _Watcher(options.config) if options.watch else None
    try:
        yield
    finally:
        if watcher is not None:
            watcher.stop()


class _Supervisor(Multiprocess):
    """uvicorn's worker supervisor, but SIGHUP makes every worker reload its chain in place."""

    def __init__(self, config: uvicorn.Config, sockets: list[socket.socket], options: ServeOptions,
                 pins: Path) -> None:
        super().__init__(config, sockets=sockets)
        self.options = options
        self.pins = pins
        self._reloading = threading.Lock()  # one reload at a time, in the order the signals came

    def handle_hup(self) -> None:
        """On a thread: fetching the unpinned sources may take up to their timeout, and meanwhile this
        process must go on restarting workers that die and answering SIGTERM."""
        log.info("process %d: SIGHUP: every worker reloads its chain", os.getpid())
        threading.Thread(target=self._reload_workers, daemon=True, name="http-wasm-asgi-reload").start()

    def _reload_workers(self) -> None:
        with self._reloading:
            self._refetch_unpinned()
            for process in list(self.processes):
                if process.pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(process.pid, signal.SIGHUP)

    def _refetch_unpinned(self) -> None:
        """Fetch the config's unpinned sources (it may name new ones) once for every worker, before they
        reload. On a failure the pins stay as they were: a bad config fails each worker's reload too (it
        keeps its chain), and a source that could not be fetched leaves the workers on the module they
        follow."""
        try:
            sources.write_pins(self.pins, load_config(self.options.config).source_pins())
        except ConfigError as exc:
            log.error("process %d: reading the config for its unpinned guests failed: %s", os.getpid(), exc)
        except Exception:  # e.g. the pins file cannot be written: never the end of the reload thread
            log.exception("process %d: fetching the unpinned guests for the reload failed", os.getpid())


class _QuietServer(uvicorn.Server):
    """A second uvicorn server in the process: the app's server handles the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class _Listener:
    """The metrics listener: its own uvicorn server on its own port (bound now, so a taken port fails early)."""

    def __init__(self, app: Callable[..., Any], options: ServeOptions) -> None:
        config = uvicorn.Config(app, host=options.metrics_host, port=options.metrics_port or 0, lifespan="off",
                                access_log=False, log_level=options.log_level, log_config=_log_config(options))
        self.socket = config.bind_socket()
        self.server = _QuietServer(config)
        self._task: asyncio.Task[None] | None = None
        log.info("process %d: metrics on http://%s:%d/metrics (and /healthz, /readyz)", os.getpid(),
                 options.metrics_host, self.socket.getsockname()[1])

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.server.serve(sockets=[self.socket]))
        while not self.server.started and not self._task.done():
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self.server.should_exit = True
        if self._task is not None:
            await self._task

    async def run_until_stopped(self) -> None:
        await self.server.serve(sockets=[self.socket])


class _Watcher:
    """`--watch`: a thread watching the config file and every guest file it names (watchfiles); a change
    sends this process SIGHUP, as an operator would.

    Paths are kept as given (symlinks not followed), and in the config's folder a change of an entry
    named `..*` counts too: a Kubernetes ConfigMap volume updates its files by swapping `..data`.
    """

    def __init__(self, config: str) -> None:
        try:
            import watchfiles  # noqa: F401  (fail now, in the serve process, if the extra is missing)
        except ImportError as exc:
            raise MissingExtra("--watch", "reload", exc) from None

        self.config = Path(os.path.abspath(config))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="http-wasm-asgi-watch")
        self._thread.start()

    def _files(self) -> set[Path]:
        files = {self.config}
        with contextlib.suppress(ConfigError):
            files.update(Path(os.path.abspath(spec.path)) for spec in load_config(self.config).guests)
        return files

    def _watched(self, path: str, names: frozenset[str]) -> bool:
        return path in names or (os.path.dirname(path) == os.fspath(self.config.parent)
                                 and os.path.basename(path).startswith(".."))

    def _run(self) -> None:
        from watchfiles import watch

        while not self._stop.is_set():
            files = self._files()
            names = frozenset(os.fspath(path) for path in files)
            for changes in watch(*{path.parent for path in files}, stop_event=self._stop,
                                 watch_filter=lambda _change, path, names=names: self._watched(path, names),  # type: ignore[misc]
                                 debounce=WATCH_DEBOUNCE_MS, step=20, rust_timeout=500, yield_on_timeout=False):
                log.info("process %d: %s changed: reloading", os.getpid(),
                         ", ".join(sorted({os.path.basename(path) for _, path in changes})))
                os.kill(os.getpid(), signal.SIGHUP)
                if self._files() != files:
                    break  # watch what the new config names

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
