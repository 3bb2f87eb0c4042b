"""Helpers every bench script shares: free ports, waiting for a server, CPU placement, /proc figures, wrk's units."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 30) -> None:
    """Until something listens on 127.0.0.1:port; fails at once if `proc` (the server) exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on port {port} after {timeout:.0f} s")


CLIENT_CPU, SERVER_CPU = 0, 1  # indexes into the CPUs this process may use


def on_cpu(index: int) -> dict[str, Callable[[], Any]]:
    """Popen keyword arguments that keep a child, and every thread it starts, on one CPU.

    Rate figures on a loopback put the client (wrk and its helpers) on one core and the server on another:
    left to the scheduler, the two move onto each other's core now and then, and the share of one round
    spreads several points wider than the effect measured. {} on a machine with fewer than two CPUs."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return {}
    cpu = cpus[index % len(cpus)]
    return {"preexec_fn": lambda: os.sched_setaffinity(0, {cpu})}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and all its descendants (workers), from /proc."""
    return sum(cpu_split(pid))


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process and all its descendants (workers), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
    user = system = 0  # clock ticks
    todo = [pid]
    while todo:
        current = todo.pop()
        todo.extend(children.get(current, []))
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            user += int(fields[11])
            system += int(fields[12])
    tick = os.sysconf("SC_CLK_TCK")
    return user / tick, system / tick


def pss_mib(pid: int) -> float:
    """Proportional set size (copy-on-write pages shared by N mappings count 1/N each), from /proc."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0.0
    match = re.search(r"^Pss:\s+(\d+) kB", text, re.M)
    return int(match.group(1)) / 1024 if match else 0.0


def wrk_seconds(text: str) -> float:
    """wrk's durations: '628.00us', '1.20ms', '2.00s', '1.00m'."""
    for unit, scale in (("us", 1e-6), ("ms", 1e-3), ("s", 1.0), ("m", 60.0)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * scale
    return float(text)
