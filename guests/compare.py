"""Compare the guest languages on the same two guests: print a Markdown table for README.md.

Usage: python guests/compare.py [--requests N] [--rounds N]

For each language (Go, Zig, Rust, AssemblyScript, C) and each of `auth` and `headeradder` (the same
behaviour and config in every language), it measures with `http_wasm_asgi.devkit.devtools.bench`
(what `http-wasm-asgi bench` runs): the binary's size, the median time the guest adds to a request
in-process, the linear memory of an instance, and whether the host serves it from a snapshot taken
after its init (Go's reactors) or instantiates it fresh. The committed binaries are measured: build
them first (`python guests/build.py`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from http_wasm_asgi.devkit.devtools import RequestSpec, bench

GUESTS = Path(__file__).resolve().parent

LANGUAGES = {"go": "Go", "zig": "Zig", "rust": "Rust", "assemblyscript": "AssemblyScript", "c": "C"}

# The two guests, each with its config and a request it lets through to the app.
CASES = {
    "auth": ("s3cret", RequestSpec("GET", "/private", [("authorization", "Bearer s3cret")])),
    "headeradder": ("request x-a 1\nresponse x-b 2\n", RequestSpec("GET", "/", [("x-a", "0")])),
}


def guest_path(lang: str, name: str) -> Path:
    return GUESTS / "go" / name / f"{name}.wasm" if lang == "go" else GUESTS / lang / f"{name}.wasm"


def _size(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n < 1024 * 1024 else f"{n / 2**20:.2f} MiB"


def measure(requests: int, rounds: int) -> list[list[str]]:
    rows = []
    for lang, title in LANGUAGES.items():
        row = [title]
        snapshot = set()
        for name, (config, request) in CASES.items():
            path = guest_path(lang, name)
            print(f"measuring {path.relative_to(GUESTS.parent)}", file=sys.stderr, flush=True)
            cost = bench(str(path), config, request, requests=requests, rounds=rounds)
            if cost.status != 200:
                raise SystemExit(f"{path}: the request got {cost.status}, not 200")
            row += [_size(path.stat().st_size), f"{cost.added_us:.1f} us", f"{cost.linear_mib:.2f} MiB"]
            snapshot.add("yes" if cost.image_mib else "no")
        row.append("/".join(sorted(snapshot)))
        rows.append(row)
    return rows


def table(rows: list[list[str]]) -> str:
    header = ["language", "auth size", "auth adds", "auth memory", "headeradder size", "headeradder adds",
              "headeradder memory", "snapshot"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20000, help="timed requests per variant (20000)")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds (10)")
    args = parser.parse_args(argv)
    print(table(measure(args.requests, args.rounds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
