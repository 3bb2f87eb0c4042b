"""In-process added cost of guests, paired request by request: a wall-clock figure that holds on a VM
whose speed changes by phases.

On a shared VM, bare requests take ~11 us in one phase and ~18 us in the next, for seconds at a time,
so medians of separate rounds (bench/run.py section 1) move with the phase mix. Here each sample is a
bare request and a chain request back to back (ABBA order), and the figure is the median over samples
of (chain - bare) / bare: both sides of a sample ran in the same phase.

With `--root DIR` (repeatable) it measures other checkouts of this repository in turn, to find which
change moved the cost (each checkout needs its native path built in place: `python setup.py build_ext
--inplace` in it).

    python bench/paired.py                     # this checkout
    python bench/paired.py --root ../old --root .   --samples 8000
"""

from __future__ import annotations

import argparse
import gc
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def measure(root: Path, samples: int) -> str:
    """Child side: import http_wasm_asgi from `root`, time bare vs 1 and 3 WAT copy-header guests.

    The app and the request are bench/run.py's section 1, written out here: run.py imports parts of the
    package (devtools) that older checkouts do not have."""
    sys.path.insert(0, str(root))
    import asyncio

    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from http_wasm_asgi import Guest, HttpWasmMiddleware

    async def hello(request: Any) -> PlainTextResponse:
        return PlainTextResponse("hello")

    guest = root / "guests" / "wat" / "copy_header.wat"
    bare = Starlette(routes=[Route("/", hello)])
    chains = {"1 guest": HttpWasmMiddleware(bare, [Guest(guest, name="g0")]),
              "3 guests": HttpWasmMiddleware(bare, [Guest(guest, name=f"g{i}") for i in range(3)])}
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": "/", "raw_path": b"/", "query_string": b"", "root_path": "",
             "headers": [(b"host", b"bench"), (b"x-id", b"abc123")], "client": ("127.0.0.1", 1234),
             "server": ("127.0.0.1", 80)}
    request = {"type": "http.request", "body": b"", "more_body": False}

    async def receive() -> dict[str, Any]:
        return request

    async def send(message: dict[str, Any]) -> None:
        pass

    async def one(app: Any) -> int:
        copy = dict(scope)
        t0 = time.perf_counter_ns()
        await app(copy, receive, send)
        return time.perf_counter_ns() - t0

    async def run() -> str:
        for app in (bare, *chains.values()):
            for _ in range(500):
                await one(app)
        ratios: dict[str, list[float]] = {label: [] for label in chains}
        bares: list[float] = []
        gc.disable()
        for i in range(samples):
            for label, app in chains.items():
                if i % 2:
                    b1, c1, c2, b2 = await one(bare), await one(app), await one(app), await one(bare)
                else:
                    c1, b1, b2, c2 = await one(app), await one(bare), await one(bare), await one(app)
                b = (b1 + b2) / 2
                ratios[label].append(((c1 + c2) / 2 - b) / b)
                bares.append(b)
        gc.enable()
        figures = "; ".join(f"{label}: added/bare {statistics.median(r):.3f}x" for label, r in ratios.items())
        return f"bare {statistics.median(bares) / 1000:.2f} us (median); {figures}"

    return asyncio.run(run())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", action="append", type=Path, help="a checkout to measure (default: this one)")
    parser.add_argument("--samples", type=int, default=20000, help="ABBA samples per chain")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(measure(args.child, args.samples))
        return 0
    for root in args.root or [ROOT]:  # one process each: a checkout's modules never mix with another's
        out = subprocess.run([sys.executable, __file__, "--child", str(root.resolve()), "--samples",
                              str(args.samples)], capture_output=True, text=True, cwd=root)
        if out.returncode != 0:
            print(f"{root}: failed\n{out.stderr[-2000:]}")
            return 1
        print(f"{root}: {out.stdout.strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
