"""`http-wasm-asgi cache info|prune|clear`: what the compile and snapshot cache holds, and making room."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from ..wasm import cache_files
from ..wasm.cache import CACHE_DIR_ENV, default_cache_dir


def _folder(args: argparse.Namespace) -> Path | None:
    folder = Path(args.dir) if args.dir else default_cache_dir()
    if folder is None:
        print(f"the disk cache is off (${CACHE_DIR_ENV} is empty)")
    return folder


def _mib(size: float) -> str:
    return f"{size / 2**20:.1f} MiB"


def cmd_cache(args: argparse.Namespace) -> int:
    folder = _folder(args)
    if folder is None:
        return 0
    return {"info": _info, "prune": _prune, "clear": _clear}[args.action](folder, args)


def _info(folder: Path, args: argparse.Namespace) -> int:
    found = cache_files.entries(folder)
    total = sum(e.size for e in found)
    limit = cache_files.max_size()
    print(f"{folder}: {len(found)} entries, {_mib(total)} (limit {_mib(limit)}, "
          f"${cache_files.MAX_SIZE_ENV} or the config's cache_max_size)")
    now = time.time()
    for entry in reversed(found):  # most recently used first
        used = f"{(now - entry.used) / 3600:.1f} h ago" if entry.used else "?"
        flag = "  in use" if entry.in_use else ""
        print(f"  {entry.guest:20.20} {entry.kind:18.18} {_mib(entry.size):>11}  used {used:>10}{flag}  "
              f"{entry.stem[:24]}")
    return 0


def _prune(folder: Path, args: argparse.Namespace) -> int:
    limit = cache_files.parse_size(args.max_size, "--max-size") if args.max_size else cache_files.max_size()
    removed, kept = cache_files.prune(folder, limit)
    _report(folder, removed, kept)
    return 0


def _clear(folder: Path, args: argparse.Namespace) -> int:
    removed, kept = cache_files.prune(folder, 0)
    _report(folder, removed, kept)
    return 0


def _report(folder: Path, removed: list[cache_files.Entry], kept: list[cache_files.Entry]) -> None:
    print(f"{folder}: removed {len(removed)} entries ({_mib(sum(e.size for e in removed))})")
    for entry in kept:
        print(f"  kept {entry.guest} ({entry.kind}, {_mib(entry.size)}): a running process maps it")


def add_cache_command(sub: Any, debug: argparse.ArgumentParser) -> None:
    cache = sub.add_parser(
        "cache", parents=[debug], help="what the compile and snapshot cache holds; prune it or clear it",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="info: every entry (whose guest, what, size, when last used, whether a running process\n"
        "maps it). prune: remove the least recently used entries down to the limit (--max-size, else\n"
        f"${cache_files.MAX_SIZE_ENV}, else the config's cache_max_size, else 1 GiB) and the temp files of\n"
        "writers that died. clear: remove every entry no running process maps. The folder is\n"
        f"${CACHE_DIR_ENV} (default ~/.cache/http-wasm-asgi), or --dir.")
    cache.add_argument("action", choices=("info", "prune", "clear"))
    cache.add_argument("--dir", metavar="DIR", help="the cache folder (default: as serve uses it)")
    cache.add_argument("--max-size", metavar="SIZE", help="prune: the size to prune to (e.g. 512MiB)")
    cache.set_defaults(func=cmd_cache)
