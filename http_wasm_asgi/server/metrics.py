"""Prometheus metrics of the guests, read at scrape time, and the listener that serves them.

Nothing here runs per request: the accelerator counts calls in each guest's `CallStats` and the pools
keep their own figures; `figures()` reads them when Prometheus scrapes. With `serve --workers N` each
worker publishes its figures to a file every PUBLISH_SECONDS and the serve process, which alone
listens for scrapes, adds them up (`WorkerFiles`): counters of a worker that exited stay counted, its
gauges do not (as prometheus_client's multiprocess mode does).

From Python, for an app that already exposes Prometheus metrics:

    from prometheus_client import REGISTRY
    from http_wasm_asgi.metrics import GuestCollector
    REGISTRY.register(GuestCollector())
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Final

from .. import _native
from ..asgi.types import Receive, Scope, Send
from ..errors import MissingExtra
from ..files import pid_alive, write_atomic
from ..registry import RELOADS, guest_stats, open_guests, package_version
from ..wasm.capi import wasmtime_version
from ..wasm.stats import CALL_BUCKETS_NS

try:
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, exposition, generate_latest
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import Collector
except ImportError as exc:
    raise MissingExtra("metrics (--metrics-port, http_wasm_asgi.metrics)", "metrics", exc) from None

# A sample: (its name, its labels as sorted (name, value) pairs) -> value.
Figures = dict[tuple[str, tuple[tuple[str, str], ...]], float]

__all__ = ["CONTENT_TYPE", "FAMILIES", "PHASES", "GuestCollector", "MetricsApp", "WorkerFiles", "families", "figures",
           "publish", "registry"]

PHASES: Final = ("handle_request", "handle_response")
PUBLISH_SECONDS: Final = 1.0  # how often a worker of `serve --workers N` publishes its figures
FAMILIES: Final = {  # name: (type, help)
    "http_wasm_guest_calls": ("counter", "Guest calls that ended, by guest and phase"),
    "http_wasm_guest_call_seconds": ("histogram", "Duration of guest calls, from start to end (slices and "
                                                  "the waits between them)"),
    "http_wasm_guest_short_circuits": ("counter", "Requests a guest answered itself (handle_request next=0)"),
    "http_wasm_guest_sync_overruns": ("counter", "handle_request calls stopped on the synchronous fast path after a "
                                                 "whole tick (the request started over; two within 5,000 calls "
                                                 "make the guest's calls yield for the next 10 s)"),
    "http_wasm_guest_traps": ("counter", "Guest calls that trapped, by cause (trap, cpu_limit, memory_limit, "
                                         "exit)"),
    "http_wasm_guest_skips": ("counter", "Requests that went on without a fail_open guest that failed, by cause "
                                         "(trap, cpu_limit, memory_limit, exit, pool_timeout, init)"),
    "http_wasm_pool_instances": ("gauge", "Live instances per guest, by state (idle, in_use)"),
    "http_wasm_pool_waiting": ("gauge", "Requests waiting for an instance"),
    "http_wasm_pool_timeouts": ("counter", "Requests that waited pool_timeout for an instance and got 503"),
    "http_wasm_instances_created": ("counter", "Instances created, by source (snapshot, init)"),
    "http_wasm_instance_memory_bytes": ("gauge", "Linear memory of all live instances of a guest"),
    "http_wasm_reloads": ("counter", "Chain reloads, by result (ok, error)"),
    "http_wasm_build_info": ("gauge", "Processes serving, by build: package version, wasmtime version, native "
                                      "path on or off (1 per process)"),
}
# The classic text format every Prometheus 2.x reads (the samples' names are all plain ones)
CONTENT_TYPE: Final = str(getattr(exposition, "CONTENT_TYPE_PLAIN_0_0_4", CONTENT_TYPE_LATEST))
_SUFFIXES: Final = ("_total", "_bucket", "_count", "_sum")
_GAUGES: Final = frozenset(name for name, (kind, _) in FAMILIES.items() if kind == "gauge")


def _family(sample: str) -> str:
    if sample in FAMILIES:
        return sample
    for suffix in _SUFFIXES:
        if sample.endswith(suffix) and sample[:-len(suffix)] in FAMILIES:
            return sample[:-len(suffix)]
    raise KeyError(sample)


def _add(figures: Figures, sample: str, value: float, **labels: str) -> None:
    key = (sample, tuple(sorted(labels.items())))
    figures[key] = figures.get(key, 0) + value


def _call_figures(figures: Figures) -> None:
    bounds = [f"{ns / 1e9:g}" for ns in CALL_BUCKETS_NS] + ["+Inf"]
    for guest, stats in guest_stats().items():
        for phase, name in enumerate(PHASES):
            _add(figures, "http_wasm_guest_calls_total", stats.calls(phase), guest=guest, phase=name)
            buckets, seconds = stats.histogram(phase)
            for bound, count in zip(bounds, buckets, strict=True):
                _add(figures, "http_wasm_guest_call_seconds_bucket", count, guest=guest, phase=name, le=bound)
            _add(figures, "http_wasm_guest_call_seconds_count", buckets[-1], guest=guest, phase=name)
            _add(figures, "http_wasm_guest_call_seconds_sum", seconds, guest=guest, phase=name)
        _add(figures, "http_wasm_guest_short_circuits_total", stats.short_circuits, guest=guest)
        _add(figures, "http_wasm_guest_sync_overruns_total", stats.sync_overruns, guest=guest)
        for (phase_name, cause), count in list(stats.traps.items()):
            _add(figures, "http_wasm_guest_traps_total", count, guest=guest, phase=phase_name, cause=cause)
        for cause, count in list(stats.skips.items()):
            _add(figures, "http_wasm_guest_skips_total", count, guest=guest, cause=cause)
        for source, count in list(stats.created.items()):
            _add(figures, "http_wasm_instances_created_total", count, guest=guest, source=source)
        _add(figures, "http_wasm_pool_timeouts_total", stats.closed_pool_timeouts, guest=guest)


def _pool_figures(figures: Figures) -> None:
    for guest in open_guests():
        pool, name = guest.pool, guest.name
        _add(figures, "http_wasm_pool_instances", pool.idle, guest=name, state="idle")
        _add(figures, "http_wasm_pool_instances", pool.in_use, guest=name, state="in_use")
        _add(figures, "http_wasm_pool_waiting", pool.waiting, guest=name)
        _add(figures, "http_wasm_pool_timeouts_total", pool.timeouts, guest=name)
        memory = sum(instance.memory_size() for instance in pool.instances() if not instance.closed)
        _add(figures, "http_wasm_instance_memory_bytes", memory, guest=name)


def figures() -> Figures:
    """Every sample of this process now (on the thread that runs the guests: it reads their pools)."""
    result: Figures = {}
    _call_figures(result)
    _pool_figures(result)
    for outcome, count in RELOADS.items():
        _add(result, "http_wasm_reloads_total", count, result=outcome)
    _add(result, "http_wasm_build_info", 1, version=package_version(), wasmtime=wasmtime_version(),
         native="on" if _native.EXT is not None else "off")
    return result


def families(samples: Figures) -> list[Metric]:
    """The samples as Prometheus metric families, in FAMILIES order."""
    metrics = {name: Metric(name, doc, kind) for name, (kind, doc) in FAMILIES.items()}
    for (sample, labels), value in samples.items():
        metrics[_family(sample)].add_sample(sample, dict(labels), value)
    return list(metrics.values())


class GuestCollector(Collector):
    """A prometheus_client collector of the guests' figures: register it on any registry.

    `source` gives the samples: this process's (`figures`, the default) or those the workers of
    `serve --workers N` published (`WorkerFiles`).
    """

    def __init__(self, source: Callable[[], Figures] = figures) -> None:
        self.source = source

    def collect(self) -> Iterable[Metric]:
        return families(self.source())

    def describe(self) -> Iterable[Metric]:
        return [Metric(name, doc, kind) for name, (kind, doc) in FAMILIES.items()]


def registry(source: Callable[[], Figures] = figures) -> CollectorRegistry:
    """A registry holding only the guests' figures (what `serve --metrics-port` exposes)."""
    result = CollectorRegistry(auto_describe=True)
    result.register(GuestCollector(source))
    return result


# -- serve --workers N: each worker publishes, the serve process adds up --
def publish(folder: Path, *, ready: bool, stopped: bool = False) -> None:
    """Write this process's figures to `folder/<pid>.json` (replaced atomically); `stopped`: the last time."""
    data = {"pid": os.getpid(), "ready": ready, "stopped": stopped,
            "samples": [[sample, [list(pair) for pair in labels], value]
                        for (sample, labels), value in figures().items()]}
    write_atomic(folder / f"{os.getpid()}.json", json.dumps(data).encode(), mode=0o644)


class WorkerFiles:
    """The figures the workers published in `folder`, added up; whether every live worker is ready."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _read(self) -> list[dict[str, Any]]:
        found = []
        for path in sorted(self.folder.glob("*.json")):
            with contextlib.suppress(OSError, ValueError):
                data = json.loads(path.read_text())
                data["live"] = not data["stopped"] and pid_alive(int(data["pid"]))
                found.append(data)
        return found

    def __call__(self) -> Figures:
        result: Figures = {}
        for data in self._read():
            for sample, labels, value in data["samples"]:
                if data["live"] or _family(sample) not in _GAUGES:  # an exited worker's gauges are gone
                    key = (sample, tuple((str(k), str(v)) for k, v in labels))
                    result[key] = result.get(key, 0) + float(value)
        return result

    def ready(self, workers: int) -> bool:
        """At least `workers` live workers have loaded their chain and are serving."""
        return sum(1 for data in self._read() if data["live"] and data.get("ready")) >= workers


class MetricsApp:
    """The metrics listener (its own port, never the app's): GET /metrics (Prometheus text format),
    /healthz (200 while the process lives) and /readyz (200 once the chain is loaded and serving, and
    not draining; else 503)."""

    def __init__(self, collector_registry: CollectorRegistry, ready: Callable[[], bool]) -> None:
        self.registry = collector_registry
        self.ready = ready

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/metrics":
            status, body, kind = 200, generate_latest(self.registry), CONTENT_TYPE
        elif path == "/healthz":
            status, body, kind = 200, b"ok\n", "text/plain"
        elif path == "/readyz":
            ready = self.ready()
            status, body, kind = (200, b"ready\n", "text/plain") if ready else (503, b"not ready\n", "text/plain")
        else:
            status, body, kind = 404, b"not found: try /metrics, /healthz or /readyz\n", "text/plain"
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", kind.encode()), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
