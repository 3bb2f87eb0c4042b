"""Heavy-guest benchmark (issue 12): a WAF in front of an app that awaits 20 ms, from a cold start.

    python bench/heavy.py            # full run (about 5 minutes on 2 cores; needs `wrk`)
    python bench/heavy.py --smoke    # a small rule set, short runs: keeps the script working in CI

The guest is guests/go/waf/waf.wasm with guests/go/waf/rules.py's heavy() rule set (3000 rules:
init ~0.3 s of CPU, 73.5 MiB of linear memory), `Guest()` defaults but for the options a scenario
names. The server is `uvicorn heavy_app:app` (bench/heavy_app.py: one worker, the app awaits
20 ms like a database call, a ticker coroutine records the event loop's largest lag, GET /_stats
reports it with the pool's figures and every instance creation). Every start is a fresh server
process with a cache dir of its own (HTTP_WASM_ASGI_CACHE_DIR): empty (the snapshot is built at
start-up) or a copy of one where the snapshot was built before (loaded from disk, mapped).
wrk runs `-t1 -c32 --timeout 2s --latency` as soon as the port answers (the cold burst).

Scenarios and targets (PASS/FAIL per target, like bench/run.py):
- a new instance from the snapshot, in this process (Guest.new_instance) and in the server
  (each creation timed; the pool creates snapshot instances inline, on the loop): <= 2 ms;
- the cold burst: no event-loop stall > 50 ms, 0 timeouts, 0 errors, max latency <= 1 s;
- its rate >= 0.80x of the most it can be: the same guest's CPU-bound rate (the same server, the app
  answering at once, warmed up), or the 20 ms app's own rate without a guest (c / 20 ms in theory; a
  sleep on a real loop overshoots it), whichever is lower, in interleaved rounds;
- PSS (/proc/PID/smaps_rollup) with 32 instances in use <= 400 MiB, and after idle trimming
  (idle_timeout 2 s) back down;
- `http-wasm-asgi serve bench/heavy.yaml --workers 2` on an empty cache: one snapshot built
  (one cache entry, one "snapshot after init" log line), both workers' PSS;
- a light guest (guests/zig/headeradder.wasm, Guest() defaults): 200 clients that request a
  20 MiB response and never read leave a normal request answered (200) within 1 s;
- issue 28, heavy-guest memory: the WAF and guests/go/churn (a heap churned per request, like a
  garbage-collected guest's), `Guest()` defaults, 20 ms app vs CPU-bound and vs the app without a
  guest in interleaved rounds: the WAF's rate >= 0.95x of the lower and its PSS with 32 instances in
  use <= 400 MiB; for both, PSS per instance and
  the pages each holds of its own. Churn also with recycle_memory 8 MiB: at the default (64 MiB) none
  of its instances is recycled (they grow ~35 MiB) and its CPU per request is <= 0.5x 8 MiB's; 8 MiB
  brings its PSS per instance to <= 0.5x the default's. Churn's rate is bound by its own CPU (~0.7 ms a
  request): reported, no target. `--memory`: only these;
- reuse_instances=False with the snapshot: its rate vs reuse_instances=True (figures, no target);
  snapshot=False (init per instance, on the pool's thread): the cold burst for comparison.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from benchutil import cpu_seconds, free_port, pss_mib, wait_port, wrk_seconds

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
MiB = 1024 * 1024
CONNECTIONS = 32
DELAY_MS = 20
PSS_LIMIT_MIB = 400
Check = tuple[str, str, str, bool]


class Report:
    """bench/run.py's table: one row per figure, PASS/FAIL per target."""

    def __init__(self) -> None:
        self.verdicts: list[Check] = []

    @staticmethod
    def header(title: str, *columns: str) -> None:
        print(f"\n### {title}\n", flush=True)
        Report.row(*columns)
        Report.row(*("-" * w for w in (60, 14, 24)), "-" * 4)

    @staticmethod
    def row(label: str, value: str = "", target: str = "", verdict: str = "") -> None:
        print(f"| {label:<60} | {value:>14} | {target:<24} | {verdict:<4} |", flush=True)

    def check(self, label: str, value: str, target: str, ok: bool) -> None:
        self.verdicts.append((label, value, target, ok))
        self.row(label, value, target, "PASS" if ok else "FAIL")


# --- measuring a process ----------------------------------------------------------------------------

def worker_pids(pid: int) -> list[int]:
    """uvicorn's worker processes under `pid` (spawned by multiprocessing)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and b"spawn_main" in cmdline:
            found.append(int(entry.name))
    return sorted(found)


class Sampler:
    """Samples the PSS of some processes every 0.2 s while a load runs: the largest sum seen."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.peak: dict[int, float] = dict.fromkeys(pids, 0.0)
        self.peak_sum = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            got = {pid: pss_mib(pid) for pid in self.pids}
            for pid, value in got.items():
                self.peak[pid] = max(self.peak[pid], value)
            self.peak_sum = max(self.peak_sum, sum(got.values()))

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# --- servers and clients ----------------------------------------------------------------------------
class Server:
    """A fresh server process; `started` is the seconds from spawn to the port answering."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path, timeout: float = 300) -> None:
        self.port = free_port()
        self.log = log
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(BENCH), str(ROOT)]), **env)
        begin = time.monotonic()
        with log.open("wb") as out:
            self.proc = subprocess.Popen([*args, "--port", str(self.port)], cwd=BENCH, env=env, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_port(self.port, self.proc, timeout)
        except BaseException:
            self.stop()
            raise
        self.started = time.monotonic() - begin

    @classmethod
    def uvicorn(cls, env: dict[str, str], log: Path) -> Server:
        return cls([sys.executable, "-m", "uvicorn", "heavy_app:app", "--log-level", "warning", "--no-access-log"],
                   env, log)

    def stats(self) -> dict[str, Any]:
        status, body = get(self.port, "/_stats")
        assert status == 200, status
        return dict(json.loads(body))

    def stop(self) -> str:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.log.read_text(errors="replace")


def get(port: int, path: str, timeout: float = 10) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wrk(port: int, seconds: float, connections: int = CONNECTIONS) -> dict[str, Any]:
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "2s", "--latency",
                          f"http://127.0.0.1:{port}/"], capture_output=True, text=True, check=True).stdout
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    latency = out.split("Latency", 1)[1].split()  # avg, stdev, max, +/- stdev
    return {"rate": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
            "requests": int(re.search(r"(\d+) requests in", out).group(1)),  # type: ignore[union-attr]
            "timeouts": int(errors.group(4)) if errors else 0,
            "errors": (sum(int(errors.group(i)) for i in (1, 2, 3)) if errors else 0) +
                      (int(non2xx.group(1)) if non2xx else 0),
            "max_latency": wrk_seconds(latency[2]),
            "p99": wrk_seconds(re.search(r"^\s*99%\s+(\S+)", out, re.M).group(1)),  # type: ignore[union-attr]
            "output": out}


@contextlib.contextmanager
def cache_copy(source: Path | None) -> Iterator[Path]:
    """A cache dir of this scenario's own: empty, or a copy of one that holds the built snapshot."""
    with tempfile.TemporaryDirectory(prefix="heavy-cache-") as tmp:
        cache = Path(tmp) / "cache"
        if source is None:
            cache.mkdir()
        else:
            shutil.copytree(source, cache, ignore=shutil.ignore_patterns("*.lock", "*.tmp"))
        yield cache


# --- scenarios --------------------------------------------------------------------------------------
def cold_burst(cache: Path, logs: Path, seconds: float, *, delay_ms: int = DELAY_MS, idle_timeout: float | None = None,
               warm: bool = False, **env: str) -> dict[str, Any]:
    """A fresh server on `cache`, wrk as soon as it listens; PSS sampled throughout; idle trimming after."""
    settings = {"HTTP_WASM_ASGI_CACHE_DIR": str(cache), "HEAVY_DELAY_MS": str(delay_ms), **env}
    if idle_timeout is not None:
        settings["HEAVY_IDLE_TIMEOUT"] = str(idle_timeout)
    server = Server.uvicorn(settings, logs / f"server-{len(list(logs.iterdir()))}.log")
    got: dict[str, Any] = {"started": server.started}
    try:
        got["pss_start"] = pss_mib(server.proc.pid)
        if warm:
            wrk(server.port, 2)
        cpu0 = cpu_seconds(server.proc.pid)
        with Sampler([server.proc.pid]) as sampler:
            got["wrk"] = wrk(server.port, seconds)
        got["cpu_us"] = (cpu_seconds(server.proc.pid) - cpu0) / max(got["wrk"]["requests"], 1) * 1e6
        got["stats"] = server.stats()
        got["pss_busy"] = sampler.peak_sum
        if idle_timeout is not None:
            time.sleep(2 * idle_timeout + 1.5)  # the trim timer fires idle_timeout after the last release
            got["pss_idle"] = pss_mib(server.proc.pid)
            got["stats_idle"] = server.stats()
    finally:
        got["log"] = server.stop()
    return got


def new_instances(cache: Path, rules: int | None, count: int) -> dict[str, float]:
    """Guest.new_instance on the snapshot, in a fresh process (the snapshot from the disk cache)."""
    code = """
import json, os, statistics, sys, time
sys.path.insert(0, sys.argv[1])
import heavy_app
g = heavy_app.GUEST
times, keep = [], []
for _ in range(int(sys.argv[2])):
    t = time.perf_counter()
    keep.append(g.new_instance())
    times.append(time.perf_counter() - t)
print(json.dumps({"median_ms": statistics.median(times) * 1000, "max_ms": max(times) * 1000,
                  "detail": g.snapshot.detail, "image_mib": g.snapshot.image_bytes / 2**20,
                  "init_ms": g.snapshot.init_seconds * 1000}))
"""
    env = dict(os.environ, HTTP_WASM_ASGI_CACHE_DIR=str(cache), PYTHONPATH=str(ROOT))
    if rules:
        env["HEAVY_RULES"] = str(rules)
    out = subprocess.run([sys.executable, "-c", code, str(BENCH), str(count)], env=env, capture_output=True,
                         text=True, check=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def two_workers(logs: Path, seconds: float, rules: int | None) -> dict[str, Any]:
    """`serve bench/heavy.yaml --workers 2` (the heavy rule set) on an empty cache."""
    sys.path.insert(0, str(BENCH))
    import heavy_app

    config = yaml.safe_load((BENCH / "heavy.yaml").read_text())
    guest = config["guests"][0]
    guest["path"] = str((BENCH / guest["path"]).resolve())
    rule_set = heavy_app.waf_rules().generate(rules) if rules else heavy_app.waf_rules().heavy()
    guest["config"] = {"base64": base64.b64encode(json.dumps(rule_set, separators=(",", ":")).encode()).decode()}
    config["log_level"] = "info"
    got: dict[str, Any] = {}
    with cache_copy(None) as cache:
        path = cache.parent / "heavy.yaml"
        path.write_text(yaml.safe_dump(config))
        server = Server([str(BIN / "http-wasm-asgi"), "serve", str(path), "--workers", "2"],
                        {"HTTP_WASM_ASGI_CACHE_DIR": str(cache), "HEAVY_GUEST": "none",
                         "HEAVY_DELAY_MS": str(DELAY_MS)}, logs / "serve-2-workers.log")
        try:
            deadline = time.monotonic() + 300  # the master listens first: wait until both workers are up
            while time.monotonic() < deadline and server.log.read_text(errors="replace").count("chain loaded") < 3:
                time.sleep(0.05)
            got["started"] = server.started + (time.monotonic() - deadline + 300)
            workers = worker_pids(server.proc.pid)
            with Sampler(workers) as sampler:
                got["wrk"] = wrk(server.port, seconds)
            got["workers_pss"] = [sampler.peak[pid] for pid in workers]
            got["workers_pss_sum"] = sampler.peak_sum
            got["master_pss"] = pss_mib(server.proc.pid)
        finally:
            log = server.stop()
        got["snapshots_in_cache"] = len(list(cache.glob("snapshot-*.wasm")))
    got["built_lines"] = log.count("snapshot after init")
    got["loaded"] = re.findall(r"chain loaded in front of .*?: (.*)", log)
    return got


def slow_readers(logs: Path, clients: int) -> dict[str, Any]:
    """The light guest with Guest() defaults: `clients` sockets ask for 20 MiB and never read."""
    got: dict[str, Any] = {}
    with cache_copy(None) as cache:
        server = Server.uvicorn({"HTTP_WASM_ASGI_CACHE_DIR": str(cache), "HEAVY_GUEST": "light",
                                 "HEAVY_DELAY_MS": str(DELAY_MS)}, logs / "slow-readers.log")
        socks = []
        try:
            for _ in range(clients):
                sock = socket.create_connection(("127.0.0.1", server.port))
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.sendall(b"GET /big HTTP/1.1\r\nhost: bench\r\n\r\n")
                socks.append(sock)
            time.sleep(2)  # every response started, and stuck on a full socket buffer
            stats = server.stats()
            start = time.perf_counter()
            status, _ = get(server.port, "/", timeout=10)
            got["seconds"] = time.perf_counter() - start
            got["status"] = status
            got["in_use"] = stats["pool_in_use"]
            got["pool_size"] = stats["pool_size"]
        finally:
            for sock in socks:
                sock.close()
            server.stop()
    return got


def guest_memory(logs: Path, seconds: float, rounds: int, kind: str, rule_env: dict[str, str],
                 recycle: str | None = None) -> dict[str, Any]:
    """Issue 28: one heavy guest behind the 20 ms app, then CPU-bound, in interleaved rounds: rates, PSS with
    the instances in use, and what each instance holds of its own (pages it wrote) and how far it grew."""
    env = {"HEAVY_GUEST": kind, **rule_env, **({"HEAVY_RECYCLE": recycle} if recycle else {})}
    got: dict[str, Any] = {"kind": kind, "recycle": recycle or "default", "awaiting": [], "bound": [], "plain": []}
    modes = ("awaiting", "bound", "plain")
    with cache_copy(None) as built:
        for r in range(rounds):
            for mode in (modes if r % 2 == 0 else tuple(reversed(modes))):
                settings = {"HEAVY_GUEST": "none"} if mode == "plain" else env  # plain: the same app, no guest
                run = cold_burst(built, logs, seconds, delay_ms=0 if mode == "bound" else DELAY_MS,
                                 warm=mode == "bound", **settings)
                got[mode].append(run)
    return got


def _print_memory(report: Report, got: dict[str, Any]) -> tuple[float, float, float, int]:
    """The table of one guest_memory run; returns (rate ratio, PSS busy, PSS per instance, instances)."""
    awaiting, bound = got["awaiting"], got["bound"]
    rate = statistics.median(run["wrk"]["rate"] for run in awaiting)
    bound_rate = statistics.median(run["wrk"]["rate"] for run in bound)
    busy = statistics.median(run["pss_busy"] for run in awaiting)
    start = statistics.median(run["pss_start"] for run in awaiting)
    last = awaiting[-1]["stats"]
    peak = max(run["stats"].get("pool_peak", 0) or run["stats"]["pool_size"] for run in awaiting)
    per = (busy - start) / max(peak - 1, 1)  # the start holds one instance already
    own, grown = last["own_mib"] or [0.0], last["grown_mib"] or [0.0]
    report.header(f"{got['kind']} guest, recycle_memory {recycle_label(got)}: wrk -t1 -c{CONNECTIONS}, "
                  f"{len(awaiting)} rounds", "figure", "value", "")
    # The most a 20 ms app allows, whatever the guest: the same app without a guest, same run (c / 20 ms in
    # theory; a sleep overshoots it on a real loop)
    ceiling = statistics.median(run["wrk"]["rate"] for run in got["plain"])
    report.row("requests/s: 20 ms app; CPU-bound (app answers at once)", f"{rate:.0f}",
               f"{bound_rate:.0f} (no guest: {ceiling:.0f}; c / 20 ms: {CONNECTIONS / (DELAY_MS / 1000):.0f})")
    report.row("server CPU per request: 20 ms app; CPU-bound",
               f"{statistics.median(run['cpu_us'] for run in awaiting):.0f} us",
               f"{statistics.median(run['cpu_us'] for run in bound):.0f} us")
    report.row("timeouts; errors (20 ms app)", f"{sum(r['wrk']['timeouts'] for r in awaiting)}; "
               f"{sum(r['wrk']['errors'] for r in awaiting)}")
    report.row("PSS: at start (1 instance); peak under load", f"{start:.0f} MiB", f"{busy:.0f} MiB")
    report.row(f"PSS per instance ((peak - start) / {peak - 1} more instances)", f"{per:.1f} MiB")
    report.row("own pages per instance after the load: median; max", f"{statistics.median(own):.1f} MiB",
               f"{max(own):.1f} MiB")
    report.row("memory grown past the image: median; max", f"{statistics.median(grown):.1f} MiB",
               f"{max(grown):.1f} MiB")
    report.row("instances recycled; created (last 20 ms run)", str(last.get("pool_recycled", 0)),
               str(last.get("created", 0)))
    return rate / min(bound_rate, ceiling), busy, per, peak


def recycle_label(got: dict[str, Any]) -> str:
    """Which recycle_memory a guest_memory run measured: "64 MiB (default)", "8 MiB" or "none"."""
    value = got["awaiting"][-1]["stats"].get("recycle_memory")
    size = "none" if value is None else f"{value / MiB:g} MiB"
    return f"{size} (default)" if got["recycle"] == "default" else size


def memory_checks(smoke: bool, report: Report) -> None:
    """Issue 28's targets: both heavy guests with Guest() defaults; the churning one with recycle_memory 8 MiB too
    (its memory bounded, for CPU: figures and what recycling must buy, no rate target)."""
    rules = 100 if smoke else None
    seconds, rounds = (2, 1) if smoke else (8, 2)
    rule_env = {"HEAVY_RULES": str(rules)} if rules else {}
    with tempfile.TemporaryDirectory(prefix="heavy-logs-") as tmp:
        logs = Path(tmp)
        waf, churn, small = (guest_memory(logs, seconds, rounds, "waf", rule_env),
                             guest_memory(logs, seconds, rounds, "churn", {}),
                             guest_memory(logs, seconds, rounds, "churn", {}, recycle=str(8 * MiB)))
    (ratio, busy, per, peak), (_, _, kept, _), (_, _, bounded, _) = \
        (_print_memory(report, got) for got in (waf, churn, small))
    # issue 28's targets, for the WAF at the defaults: the rate the 20 ms app allows, its PSS
    report.check(f"28 waf at {recycle_label(waf)}: rate, 20 ms app / min(CPU-bound, no guest)", f"{ratio:.2f}x",
                 ">= 0.95x", ratio >= 0.95)
    report.check(f"28 waf: PSS with {peak} instances in use ({per:.1f} MiB each)", f"{busy:.0f} MiB",
                 f"<= {PSS_LIMIT_MIB} MiB", busy <= PSS_LIMIT_MIB and peak >= CONNECTIONS)
    # churn: its rate is bound by its own CPU (~0.7 ms a request: one worker's core at ~1400/s), so no rate
    # target; the default must keep its instances (and its CPU), 8 MiB must buy memory for it
    recycled = sum(run["stats"].get("pool_recycled", 0) for run in churn["awaiting"] + churn["bound"])
    report.check(f"28 churn at {recycle_label(churn)}: instances recycled", str(recycled), "0", recycled == 0)
    cpu_kept, cpu_bounded = (statistics.median(run["cpu_us"] for run in got["awaiting"]) for got in (churn, small))
    report.check(f"28 churn: CPU per request, {recycle_label(churn)} vs {recycle_label(small)}",
                 f"{cpu_kept:.0f} / {cpu_bounded:.0f} us", "<= 0.5x", cpu_kept <= cpu_bounded / 2)
    report.check(f"28 churn: PSS per instance, {recycle_label(small)} vs {recycle_label(churn)}",
                 f"{bounded:.1f} / {kept:.1f} MiB", "<= 0.5x", bounded <= kept / 2)


# --- the run ----------------------------------------------------------------------------------------
def checks(smoke: bool, report: Report | None = None) -> list[Check]:
    """Run every scenario; print the tables; return (target, measured, goal, met) per target."""
    report = report or Report()
    if shutil.which("wrk") is None:
        report.row("heavy guests (issue 12)", "skipped", "wrk not found")
        return [("issue 12 heavy guest: wrk not found", "-", "wrk installed", False)]
    rules = 100 if smoke else None  # smoke: a small rule set (a fast init), the same code paths
    seconds = 2 if smoke else 10
    rounds = 1 if smoke else 3
    rule_env = {"HEAVY_RULES": str(rules)} if rules else {}
    print(f"heavy guests (issue 12): {os.cpu_count()} cpus, load average {os.getloadavg()[0]:.1f} at the start",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="heavy-logs-") as tmp, cache_copy(None) as built:
        logs = Path(tmp)
        # 1. an empty cache: the snapshot is built at start-up; the cache dir then holds it
        empty = cold_burst(built, logs, seconds, **rule_env)
        _print_burst(report, "cold start, EMPTY cache (snapshot built at start-up)", empty)
        # 2. the snapshot from the disk cache (a copy of the one just built), with idle trimming after
        with cache_copy(built) as cache:
            disk = cold_burst(cache, logs, seconds, idle_timeout=1 if smoke else 2, **rule_env)
        _print_burst(report, f"cold start, snapshot ON DISK (idle_timeout {1 if smoke else 2} s)", disk)
        # 3. the rate vs the CPU-bound rate, interleaved rounds (round 1 is the start above)
        cold_rates, bound_rates, plain_rates = [disk["wrk"]["rate"]], [], []
        for r in range(rounds):
            order = ("bound", "plain", "cold") if r % 2 == 0 else ("cold", "plain", "bound")
            for kind in order:
                if kind == "cold" and r == 0:
                    continue
                with cache_copy(built) as cache:
                    if kind == "bound":
                        got = cold_burst(cache, logs, seconds, delay_ms=0, warm=True, **rule_env)
                        bound_rates.append(got["wrk"]["rate"])
                        bound = got
                    elif kind == "plain":  # the same 20 ms app without a guest: what the app itself allows
                        plain_rates.append(cold_burst(cache, logs, seconds, HEAVY_GUEST="none")["wrk"]["rate"])
                    else:
                        cold_rates.append(cold_burst(cache, logs, seconds, **rule_env)["wrk"]["rate"])
        # 4. reuse_instances=False (a fresh instance from the snapshot per request)
        with cache_copy(built) as cache:
            fresh = cold_burst(cache, logs, seconds, HEAVY_REUSE="0", **rule_env)
        # 5. no snapshot: init per instance on the pool's thread (for comparison)
        nosnap = None
        if not smoke:
            with cache_copy(built) as cache:
                nosnap = cold_burst(cache, logs, seconds, HEAVY_SNAPSHOT="0", **rule_env)
            _print_burst(report, "cold start, snapshot=False (init per instance, off the loop)", nosnap)
        with cache_copy(built) as cache:
            inproc = new_instances(cache, rules, 64)
        workers = two_workers(logs, seconds, rules)
        slow = slow_readers(logs, 50 if smoke else 200)
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end (other work on the machine skews wall-clock figures)")
    _targets(report, empty, disk, (cold_rates, bound_rates, plain_rates), bound, fresh, nosnap, inproc, workers, slow,
             rules)
    memory_checks(smoke, report)
    return report.verdicts


def _print_burst(report: Report, title: str, got: dict[str, Any]) -> None:
    stats, result = got["stats"], got["wrk"]
    report.header(f"{title}: wrk -t1 -c{CONNECTIONS} --timeout 2s", "figure", "value", "")
    snap = stats.get("snapshot", {})
    report.row("server start (spawn to listening)", f"{got['started']:.2f} s",
               f"snapshot: {snap.get('detail', '-')}"[:24])
    report.row("requests/s; server CPU per request", f"{result['rate']:.0f}", f"{got['cpu_us']:.0f} us")
    report.row("latency max; p99", f"{result['max_latency'] * 1000:.0f} ms", f"p99 {result['p99'] * 1000:.0f} ms")
    report.row("timeouts; errors (socket errors + non-2xx)", f"{result['timeouts']}; {result['errors']}")
    report.row("event loop: max lag; ticks > 50 ms late", f"{stats['max_lag_ms']:.1f} ms",
               f"{stats['stalls_over_50ms']} stalls")
    times = stats.get("create_ms") or [0.0]
    report.row("instances created while serving (on the loop)", f"{stats.get('created', 0)} "
               f"({stats.get('created_on_loop', 0)})", f"peak pool {stats.get('pool_peak', 0)}")
    report.row("  creation: median; max (max CPU)", f"{statistics.median(times):.3f} ms",
               f"{max(times):.3f} ({max(stats.get('create_cpu_ms') or [0.0]):.3f}) ms")
    if "server_inflight_peak" in stats:
        report.row("  peak requests in the middleware; in the app", str(stats["server_inflight_peak"]),
                   f"{stats['app_inflight_peak']} ({stats['connections']} connections)")
    report.row("PSS: after start; peak under load", f"{got['pss_start']:.0f} MiB", f"{got['pss_busy']:.0f} MiB")
    if "pss_idle" in got:
        report.row("PSS after idle trimming; pool size", f"{got['pss_idle']:.0f} MiB",
                   f"{got['stats_idle']['pool_size']} instances")


def _targets(report: Report, empty: dict[str, Any], disk: dict[str, Any],
             rates: tuple[list[float], list[float], list[float]], bound: dict[str, Any], fresh: dict[str, Any],
             nosnap: dict[str, Any] | None, inproc: dict[str, float], workers: dict[str, Any], slow: dict[str, Any],
             rules: int | None) -> None:
    """The verdicts of issue 12; rates: 20 ms app from cold, CPU-bound, and the 20 ms app without a guest."""
    label = f"WAF, {rules or 3000} rules"
    report.header(f"Issue 12 targets ({label}; image {inproc['image_mib']:.1f} MiB, init {inproc['init_ms']:.0f} ms "
                  "when built)", "target", "measured", "goal", "")
    report.check("12.1a new instance from the snapshot (in-process, median of 64)", f"{inproc['median_ms']:.3f} ms",
                 f"<= 2 ms (max {inproc['max_ms']:.3f})", inproc["median_ms"] <= 2)
    for name, got in (("disk", disk), ("empty cache", empty)):
        stats, result = got["stats"], got["wrk"]
        times, cpu = stats.get("create_ms") or [0.0], stats.get("create_cpu_ms") or [0.0]
        report.check(f"12.1b ({name}) creations in the server: median; max CPU",
                     f"{statistics.median(times):.3f}; {max(cpu):.3f}",
                     f"<= 2 ms ({stats['created_on_loop']}/{stats['created']} on loop)",
                     statistics.median(times) <= 2 and max(cpu) <= 2)
        report.check(f"12.2a ({name}) cold burst: event-loop max lag (wall)", f"{stats['max_lag_ms']:.1f} ms",
                     f"<= 50 ms (its CPU {stats['max_lag_cpu_ms']:.0f} ms)", stats["max_lag_ms"] <= 50)
        report.check(f"12.2a ({name}) loop-thread CPU between two ticks, max",
                     f"{stats['max_tick_cpu_ms']:.1f} ms", "<= 50 ms (no contention)", stats["max_tick_cpu_ms"] <= 50)
        report.check(f"12.2b ({name}) cold burst: timeouts; errors", f"{result['timeouts']}; {result['errors']}",
                     "0; 0", result["timeouts"] == 0 and result["errors"] == 0)
        report.check(f"12.2c ({name}) cold burst: max latency", f"{result['max_latency'] * 1000:.0f} ms", "<= 1 s",
                     result["max_latency"] <= 1)
    cold_rates, bound_rates, _ = rates
    cold, cpu_bound, plain = (statistics.median(r) for r in rates)
    ceiling = CONNECTIONS / (DELAY_MS / 1000)
    report.row(f"  rates: 20 ms app, cold ({len(cold_rates)} starts)", f"{cold:.0f}/s",
               ", ".join(f"{r:.0f}" for r in cold_rates))
    report.row(f"  rates: app answering at once, warm ({len(bound_rates)})", f"{cpu_bound:.0f}/s",
               f"{bound['cpu_us']:.0f} us CPU/request")
    report.row(f"  ceiling of c={CONNECTIONS} with a 20 ms await: c / 20 ms; the app without a guest",
               f"{ceiling:.0f}/s", f"{plain:.0f}/s")
    allowed = min(cpu_bound, plain)  # the guest's CPU-bound rate, or what the 20 ms app allows without any guest
    report.check("12.3 rate, 20 ms app from cold / min(CPU-bound, no guest)", f"{cold / allowed:.2f}x", ">= 0.80x",
                 cold >= 0.8 * allowed)
    busy_in_use = disk["stats"].get("pool_peak", 0)
    report.check(f"12.4a PSS with {busy_in_use} instances (peak under load)", f"{disk['pss_busy']:.0f} MiB",
                 f"<= {PSS_LIMIT_MIB} MiB", disk["pss_busy"] <= PSS_LIMIT_MIB and busy_in_use >= CONNECTIONS)
    idle = disk["stats_idle"]["pool_size"]
    report.check(f"12.4b PSS after idle trimming ({idle} instances left)", f"{disk['pss_idle']:.0f} MiB",
                 f"< peak ({disk['pss_busy']:.0f} MiB)", disk["pss_idle"] < disk["pss_busy"] and idle <= 2)
    pss = workers["workers_pss"]
    report.row("  2 workers: start (snapshot built by the master), rate", f"{workers['started']:.1f} s",
               f"{workers['wrk']['rate']:.0f} req/s")
    report.row("  2 workers: chain loaded (master, then each worker)", "", "; ".join(workers["loaded"])[:60])
    report.row("  2 workers: PSS of the master (built the snapshot, then idle)", f"{workers['master_pss']:.0f} MiB")
    built_once = workers["snapshots_in_cache"] == 1 and workers["built_lines"] == 1
    report.check("12.5a 2 workers: snapshots in the cache; built (log lines)",
                 f"{workers['snapshots_in_cache']}; {workers['built_lines']}", "1; 1", built_once)
    one = disk["pss_busy"]
    report.check("12.5b 2 workers: PSS of each (peak); sum vs 2x one worker",
                 " + ".join(f"{p:.0f}" for p in pss), f"sum {workers['workers_pss_sum']:.0f} vs {2 * one:.0f} MiB",
                 len(pss) == 2 and workers["workers_pss_sum"] <= 2 * one)
    report.check(f"12.6 light guest: a request beside {slow['in_use']} stuck slow readers",
                 f"{slow['status']} in {slow['seconds'] * 1000:.0f} ms", "200 within 1 s",
                 slow["status"] == 200 and slow["seconds"] <= 1)
    reuse_rate = disk["wrk"]["rate"]
    report.row("  reuse_instances=False (snapshot): rate; CPU/request", f"{fresh['wrk']['rate']:.0f}/s",
               f"{fresh['cpu_us']:.0f} us (reuse: {disk['cpu_us']:.0f})")
    report.row("  reuse_instances=False: max latency; errors", f"{fresh['wrk']['max_latency'] * 1000:.0f} ms",
               f"{fresh['wrk']['errors'] + fresh['wrk']['timeouts']} errors+timeouts")
    report.row("  reuse_instances=False / True, rate (20 ms app, cold)", f"{fresh['wrk']['rate'] / reuse_rate:.2f}x")
    if nosnap is not None:
        report.row("  snapshot=False: cold burst rate; max lag; max latency", f"{nosnap['wrk']['rate']:.0f}/s",
                   f"{nosnap['stats']['max_lag_ms']:.0f} ms; {nosnap['wrk']['max_latency'] * 1000:.0f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a small rule set and short runs")
    parser.add_argument("--memory", action="store_true", help="only issue 28's memory figures (both heavy guests)")
    args = parser.parse_args()
    report = Report()
    if args.memory:
        memory_checks(args.smoke, report)
    else:
        checks(args.smoke, report)
    verdicts = report.verdicts
    met = sum(ok for *_, ok in verdicts)
    print(f"\n{met} of {len(verdicts)} targets met" + (" (smoke: figures are not meaningful)" if args.smoke else ""))
    for label, value, goal, ok in verdicts:
        if not ok:
            print(f"  not met: {label}: {value} (goal {goal})")
    return 0 if args.smoke or met == len(verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
