"""Subprocess helpers for the command, example and deployment tests: free ports, servers that are
waited for (bounded) and always stopped, and the venv's commands."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import httpx

from .paths import ROOT

BIN = Path(sys.executable).parent
COMMAND = str(BIN / "http-wasm-asgi")  # the console script `pip install .` puts next to python
UVICORN = str(BIN / "uvicorn")
START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run(args: Sequence[str], *, cwd: Path = ROOT, timeout: float = 60,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command to completion (bounded); output captured as text."""
    return subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)


class Server:
    """A running server process: `.url`, `.output()` (stdout and stderr so far)."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path, port: int) -> None:
        self.proc = proc
        self.log = log
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

        self.final_output = ""  # everything it printed, once stopped

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else self.final_output

    def wait_for_output(self, text: str, count: int = 1, timeout: float = 15) -> str:
        deadline = time.monotonic() + timeout
        while True:
            out = self.output()
            if out.count(text) >= count:
                return out
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} x{count} not in the server's output after {timeout} s:\n{out}")
            time.sleep(0.05)


@contextlib.contextmanager
def serving(args: Sequence[str], port: int, *, cwd: Path = ROOT, env: dict[str, str] | None = None,
            ready_path: str = "/", ready: Callable[[], bool] | None = None,
            start_timeout: float = START_TIMEOUT) -> Iterator[Server]:
    """Start `args` (a server listening on `port`), wait until it answers HTTP (on `ready_path`, or
    until `ready()` is true), stop it afterwards.

    The process gets its own session, so its workers are stopped with it.
    """
    with tempfile.TemporaryDirectory(prefix="http-wasm-asgi-proc-") as tmp:
        log = Path(tmp) / "output.log"
        with log.open("wb") as sink:
            proc = subprocess.Popen(list(args), cwd=cwd, stdout=sink, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})},
                                    start_new_session=True)
        server = Server(proc, log, port)
        try:
            deadline = time.monotonic() + start_timeout
            while True:
                if proc.poll() is not None:
                    raise AssertionError(f"{list(args)} exited with {proc.returncode}:\n{server.output()}")
                if ready is not None:
                    if ready():
                        break
                else:
                    try:
                        httpx.get(server.url + ready_path, timeout=2)
                        break
                    except httpx.TransportError:
                        pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"{list(args)} did not answer in {start_timeout} s:\n{server.output()}")
                time.sleep(0.1)
            yield server
        finally:
            stop(proc)
            server.final_output = server.output()


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process's own group (it and its workers), then SIGKILL if it lingers."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    with contextlib.suppress(ProcessLookupError):  # workers left behind by a dead parent
        os.killpg(proc.pid, signal.SIGKILL)
