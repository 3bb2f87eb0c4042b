"""Where the time goes: the 1-guest in-process loop of bench/run.py under a profiler.

    python bench/profile_loop.py                 # cProfile, top functions by own time
    python bench/profile_loop.py --guests 3      # a 3-guest chain
    python bench/profile_loop.py --loop 600000   # just the loop, to sample from outside:
        py-spy record -r 2000 -f raw -o loop.txt -- python bench/profile_loop.py --loop 600000

For a live server: `BENCH_VARIANT="1 guest" uvicorn bench.e2e_app:app --port 8000`, drive it with
`wrk -t1 -c32 -d20s -H "x-id: abc" http://127.0.0.1:8000/` and `py-spy record -p PID -r 500 -f raw`.
(py-spy: `pip install py-spy`; it is not a dependency of the project.)
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import guest, scope_for, starlette_app

from http_wasm_asgi import HttpWasmMiddleware


async def loop(app: Any, n: int) -> None:
    message = {"type": "http.request", "body": b"", "more_body": False}

    async def receive() -> dict[str, Any]:
        return message

    async def send(_: Any) -> None:
        return None

    scope = scope_for()
    for _ in range(n):
        await app(dict(scope), receive, send)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--guests", type=int, default=1)
    parser.add_argument("--requests", type=int, default=50000)
    parser.add_argument("--loop", type=int, default=0, help="run this many requests without a profiler")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    app = HttpWasmMiddleware(starlette_app(), [guest("copy_header", name=f"g{i}") for i in range(args.guests)])
    if args.loop:
        asyncio.run(loop(app, args.loop))
        return 0
    profiler = cProfile.Profile()
    profiler.enable()
    asyncio.run(loop(app, args.requests))
    profiler.disable()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
