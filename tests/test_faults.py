"""Faults a real machine has, each through the real command: damaged cache entries, a cache folder that
cannot be written or is full, workers and supervisors killed, a SIGTERM during a reload, a guest file
rewritten while it is read. For each: what the user sees (statuses, log lines), that no request gets
another's data, and that the process's file descriptors come back to where they were."""

from __future__ import annotations

import contextlib
import hashlib
import os
import resource
import signal
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support.ops import AUTH, rss_mib, wait_until, write_config
from support.paths import ZIG
from support.procs import COMMAND, free_port, run, serving

pytestmark = [pytest.mark.slow, pytest.mark.servers]


# -- the cache ---------------------------------------------------------------------------------------------------
def _write(folder: Path) -> Path:
    config = write_config(folder, 1)
    text = config.read_text().replace("  - name: stamp\n", "  - name: stamp\n    snapshot: false\n")
    config.write_text(text)
    return config


def _check(config: Path, cache: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return run([COMMAND, "check", str(config)], env={"HTTP_WASM_ASGI_CACHE_DIR": str(cache), **env}, timeout=120)


def _compiled(cache: Path) -> list[Path]:
    return sorted(cache.glob("*.cwasm"))


def _intact(path: Path) -> bool:
    """Whether an entry's contents are what the digest in its name says."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:32] == path.stem.rsplit("-", 1)[1]


def _elf_section(data: bytes, wanted: str) -> tuple[int, int]:
    """(offset, size) of an ELF64 section of a compiled module (wasmtime's format is ELF)."""
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    names_at = struct.unpack_from("<Q", data, shoff + shstrndx * shentsize + 0x18)[0]
    for index in range(shnum):
        header = shoff + index * shentsize
        name_at, = struct.unpack_from("<I", data, header)
        name = data[names_at + name_at:data.index(b"\0", names_at + name_at)].decode()
        offset, size = struct.unpack_from("<QQ", data, header + 0x18)
        if name == wanted:
            return offset, size
    raise AssertionError(f"no section {wanted}")


def _flip(path: Path, offset: int, count: int = 16) -> None:
    data = bytearray(path.read_bytes())
    for i in range(offset, offset + count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))  # in place, as a bad sector or a stray write would


def _damage(how: str, target: Path, other: bytes) -> None:
    data = target.read_bytes()
    if how == "code":  # machine code: wasmtime's loader does not notice, the first request would crash
        offset, size = _elf_section(data, ".text")
        _flip(target, offset + size // 2)
    elif how == "data":
        _flip(target, len(data) - 64)
    elif how == "truncated":
        target.write_bytes(data[:len(data) // 2])
    elif how == "version":  # the engine's version and settings, as another wasmtime wrote them
        offset, size = _elf_section(data, ".wasmtime.engine")
        _flip(target, offset + 2, 4)
    elif how == "swapped":  # another guest's entry under this one's name
        target.write_bytes(other)


@pytest.mark.parametrize("how", ["code", "data", "truncated", "version", "swapped"])
def test_a_damaged_compiled_module_is_rebuilt_with_one_warning_and_requests_are_served(tmp_path: Path,
                                                                                      how: str) -> None:
    config = _write(tmp_path)
    cache = tmp_path / "cache"
    assert _check(config, cache).returncode == 0
    entries = _compiled(cache)
    assert len(entries) == 2, entries  # stamp's module, auth's snapshot
    originals = {e: e.read_bytes() for e in entries}
    for victim in entries:
        _damage(how, victim, originals[next(e for e in entries if e != victim)])
    out = _check(config, cache)
    assert out.returncode == 0, out.stderr
    warnings = [line for line in out.stderr.splitlines() if "is not used" in line]
    assert len(warnings) == 2, out.stderr  # one per damaged file, naming the guest and the file
    assert {w.split("guest ")[1].split(":")[0] for w in warnings} == {"'stamp'", "'auth'"}
    assert all(str(cache) in w for w in warnings)
    assert "Traceback" not in out.stderr
    assert out.stdout.count("ms (compiled)") == 2, out.stdout  # rebuilt
    assert len(_compiled(cache)) == 2 and all(_intact(p) for p in _compiled(cache))  # the damaged ones are gone
    again = _check(config, cache)
    assert again.returncode == 0 and "is not used" not in again.stderr and again.stdout.count("ms (disk)") == 2
    port = free_port()
    with serving([COMMAND, "serve", str(config), "--port", str(port)], port, ready_path="/",
                 env={"HTTP_WASM_ASGI_CACHE_DIR": str(cache)}) as server:
        for _ in range(20):
            response = httpx.get(server.url + "/x", headers=AUTH, timeout=10)
            assert response.status_code == 200 and response.headers["x-version"] == "1"
        assert server.proc.poll() is None


def test_a_damaged_snapshot_is_built_again_with_one_warning(tmp_path: Path) -> None:
    """A snapshot module is read only when its compiled form must be built: damage to it is found then."""
    config = _write(tmp_path)
    cache = tmp_path / "cache"
    assert _check(config, cache).returncode == 0
    snapshot = next(cache.glob("snapshot-*.wasm"))
    _flip(snapshot, len(snapshot.read_bytes()) // 2)
    assert "is not used" not in _check(config, cache).stderr  # its compiled form is intact: the module is not read
    compiled = [p for p in _compiled(cache) if snapshot.stem.removeprefix("snapshot-") in p.name]
    assert len(compiled) == 1
    compiled[0].unlink()  # evicted: the snapshot module must be compiled again
    out = _check(config, cache)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert [line for line in out.stderr.splitlines() if "is not used" in line and "'auth'" in line], out.stderr
    assert "snapshot:  yes (built)" in out.stdout  # its init ran again
    meta = next(cache.glob("snapshot-*.json"))
    meta.write_text(meta.read_text().replace('"features": ', '"features": 1'))  # a changed digit
    out = _check(config, cache)
    assert out.returncode == 0 and "metadata is damaged" in out.stderr and "snapshot:  yes (built)" in out.stdout


@pytest.mark.parametrize("cache", ["/proc/self", "/proc/http-wasm-asgi-cache", "/dev/null/cache"])
def test_a_cache_folder_that_cannot_be_written_costs_compile_time_only(tmp_path: Path, cache: str) -> None:
    """Read-only (even for root), missing and impossible to create, or under a file: the command works and
    says why the cache is not used. (The machine's Python lives under /root, so the tests cannot run it as
    an unprivileged user; these folders refuse root too.)"""
    config = _write(tmp_path)
    out = _check(config, Path(cache))
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr and out.stdout.count("ms (compiled)") == 2
    assert "cannot write the compile cache" in out.stderr  # said, not hidden
    assert len(out.stderr.splitlines()) <= 4, out.stderr  # a line per failed write, not a flood


def test_a_full_disk_leaves_no_temp_files_and_the_command_works(tmp_path: Path) -> None:
    config = _write(tmp_path)
    cache = tmp_path / "cache"

    def small_files() -> None:  # writes past 4 KiB fail (EFBIG), as on a full filesystem
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    out = subprocess.run([COMMAND, "check", str(config)], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "HTTP_WASM_ASGI_CACHE_DIR": str(cache)}, preexec_fn=small_files)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert "cannot write the compile cache" in out.stderr
    assert not list(cache.rglob("*.tmp")), list(cache.rglob("*.tmp"))
    assert _check(config, cache).returncode == 0  # with room again, the cache fills


def test_the_cache_stays_under_its_limit_and_keeps_what_a_process_maps(tmp_path: Path) -> None:
    config = _write(tmp_path)
    cache = tmp_path / "cache"
    port = free_port()
    with serving([COMMAND, "serve", str(config), "--port", str(port)], port,
                 env={"HTTP_WASM_ASGI_CACHE_DIR": str(cache)}) as server:
        (cache / f"stale.{2**22 + 7}.tmp").write_bytes(b"x")  # a writer that died (no such pid)
        info = run([COMMAND, "cache", "info", "--dir", str(cache)])
        assert info.returncode == 0 and "auth" in info.stdout and "in use" in info.stdout, info.stdout
        cleared = run([COMMAND, "cache", "clear", "--dir", str(cache)])
        assert cleared.returncode == 0 and "kept auth" in cleared.stdout, cleared.stdout
        assert len(_compiled(cache)) == 1 and not list(cache.glob("*.tmp"))  # only the mapped one stays
        assert httpx.get(server.url + "/", headers=AUTH, timeout=10).status_code == 200
    cleared = run([COMMAND, "cache", "clear", "--dir", str(cache)])
    assert "kept" not in cleared.stdout and not _compiled(cache)  # no one maps it now
    out = _check(config, cache, HTTP_WASM_ASGI_CACHE_MAX_SIZE="1KiB")  # each write prunes to the limit
    assert out.returncode == 0
    assert sum(p.stat().st_size for p in cache.iterdir()) < 2 * 1024 * 1024  # never the whole chain's entries


# -- processes ---------------------------------------------------------------------------------------------------
def _stat(pid: int | str) -> list[str]:
    """The fields of /proc/PID/stat after the command name: state, parent pid, ... (empty once it is gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return []


def _children(pid: int) -> set[int]:
    return {int(entry.name) for entry in Path("/proc").iterdir()
            if entry.name.isdigit() and _stat(entry.name)[1:2] == [str(pid)]}


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's parent may be slow to reap it)."""
    return _stat(pid)[:1] not in ([], ["Z"])


def _cmdline(pid: int) -> bytes | None:
    """A process's command line; None once it is gone (a killed worker may go between two reads)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None


def _workers(pid: int) -> set[int]:
    """serve --workers N: the uvicorn workers (the supervisor also has a multiprocessing helper child)."""
    return {child for child in _children(pid)
            if (cmdline := _cmdline(child)) is not None and b"multiprocessing.resource_tracker" not in cmdline}


@contextlib.contextmanager
def _load(url: str, seconds_per_report: float = 0.1) -> Iterator[dict[str, list[float]]]:
    """Requests from 4 threads until the block ends: the times of successes and of failures."""
    seen: dict[str, list[float]] = {"ok": [], "failed": [], "wrong": []}
    stop = threading.Event()

    def client(n: int) -> None:
        with httpx.Client(timeout=5) as c:
            i = 0
            while not stop.is_set():
                i += 1
                path = f"/c{n}/r{i}"
                try:
                    response = c.get(url + path, headers=AUTH)
                    ok = response.status_code == 200
                    seen["ok" if ok and response.json()["path"] == path else "wrong" if ok else "failed"].append(
                        time.monotonic())
                except httpx.HTTPError:
                    seen["failed"].append(time.monotonic())

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(4)]
    for t in threads:
        t.start()
    try:
        yield seen
    finally:
        stop.set()
        for t in threads:
            t.join(10)


def test_a_worker_killed_under_load_is_replaced_and_the_rate_recovers(tmp_path: Path) -> None:
    config = _write(tmp_path)
    port = free_port()
    with serving([COMMAND, "serve", str(config), "--port", str(port), "--workers", "2"], port) as server:
        wait_until(lambda: len(_workers(server.proc.pid)) == 2, 30, "two workers")
        with _load(server.url) as seen:
            time.sleep(1.5)
            victim = min(_workers(server.proc.pid))
            killed = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            wait_until(lambda: len(_workers(server.proc.pid) - {victim}) == 2, 30, "a new worker")
            time.sleep(1.5)
        before = [t for t in seen["ok"] if t < killed]
        after = [t for t in seen["ok"] if t > max(seen["ok"]) - 1.0]
        print(f"\nworker SIGKILL under load: {len(seen['ok'])} ok, {len(seen['failed'])} failed")
        assert not seen["wrong"]  # no request got another's response
        assert len(seen["failed"]) <= 8  # the requests in flight on the killed worker, at most
        assert len(after) >= 0.5 * len(before) / 1.5  # the last second's rate, against the first 1.5 s
        assert server.proc.poll() is None


def test_killing_the_supervisor_leaves_no_worker_behind(tmp_path: Path) -> None:
    config = _write(tmp_path)
    port = free_port()
    with serving([COMMAND, "serve", str(config), "--port", str(port), "--workers", "2"], port) as server:
        wait_until(lambda: len(_workers(server.proc.pid)) == 2, 30, "two workers")
        workers = _workers(server.proc.pid)
        os.kill(server.proc.pid, signal.SIGKILL)
        server.proc.wait(10)
        try:
            took = wait_until(lambda: not any(_running(pid) for pid in workers), 15, "the orphaned workers stop")
        except AssertionError:
            print(server.output(), [Path(f"/proc/{pid}/stat").read_text() for pid in workers if _running(pid)])
            raise
        print(f"\nsupervisor SIGKILL: its workers stopped {took:.1f} s later")
        with pytest.raises(httpx.ConnectError):
            httpx.get(server.url + "/", timeout=2)  # the port is free again
        assert "the supervisor" in server.output() and "is gone" in server.output()


def test_sigterm_during_a_reload_ends_cleanly(tmp_path: Path) -> None:
    config = _write(tmp_path)
    port = free_port()
    with serving([COMMAND, "serve", str(config), "--port", str(port)], port) as server:
        write_config(tmp_path, 2)
        os.kill(server.proc.pid, signal.SIGHUP)
        os.kill(server.proc.pid, signal.SIGTERM)
        assert server.proc.wait(30) == 0
        assert "Traceback" not in server.output(), server.output()


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_a_guest_file_rewritten_while_it_is_read_never_breaks_the_serving_chain(tmp_path: Path) -> None:
    config = _write(tmp_path)
    guest = tmp_path / "stamp.wasm"
    good = (ZIG / "headeradder.wasm").read_bytes()
    guest.write_bytes(good)
    config.write_text(config.read_text().replace(str(ZIG / "headeradder.wasm"), str(guest)))
    port = free_port()
    with serving([COMMAND, "serve", str(config), "--port", str(port)], port,
                 env={"HTTP_WASM_ASGI_CACHE_DIR": str(tmp_path / "cache")}) as server:
        pid = server.proc.pid
        assert httpx.get(server.url + "/", headers=AUTH, timeout=10).status_code == 200
        fds, rss = _fds(pid), rss_mib(pid)
        with _load(server.url) as seen:
            for n in range(20):  # rewritten in place (not replaced): a reader may see half of it
                with open(guest, "r+b") as f:
                    f.truncate(0)
                    f.write(good[:len(good) // 2])
                    f.flush()
                    os.kill(pid, signal.SIGHUP)
                    time.sleep(0.05 + 0.01 * (n % 3))
                    f.write(good[len(good) // 2:])
                time.sleep(0.05)
        os.kill(pid, signal.SIGHUP)
        wait_until(lambda: "reloaded" in server.output().rsplit("SIGHUP", 1)[-1] or
                   server.output().count("reload") > 20, 30, "the last reload")
        assert not seen["failed"] and not seen["wrong"], (len(seen["failed"]), len(seen["wrong"]))
        assert httpx.get(server.url + "/", headers=AUTH, timeout=10).headers["x-version"] == "1"
        assert "Traceback" not in server.output()
        wait_until(lambda: _fds(pid) <= fds + 2, 10, "file descriptors back to where they were")
        assert rss_mib(pid) < rss + 40, (rss, rss_mib(pid))  # 20 failed reloads and the load leave nothing

