"""In-process cost in instructions (callgrind): a figure a noisy VM does not move.

Wall-clock figures of `bench/run.py` section 1 vary up to 2x between back-to-back runs on a shared
VM; counted instructions do not. Each variant runs under `valgrind --tool=callgrind` twice (a short
and a long run of the same requests); the difference divided by the extra requests is the count per
request, start-up and warm-up cancelling out. Needs Debian's `valgrind`; takes a few minutes.

    python bench/instructions.py            # bare, raw middleware, 1 and 3 WAT guests
    python bench/instructions.py --short 200 --long 600   # quicker, a little less exact
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("bare", "raw", "chain1", "chain3")


def run_variant(variant: str, requests: int) -> None:
    """Child side: warm up, then serve `requests` requests to `variant`, one at a time."""
    import asyncio

    sys.path.insert(0, str(ROOT / "bench"))
    import run  # bench/run.py: the same app, scope and guest as section 1

    from http_wasm_asgi import Guest, HttpWasmMiddleware

    bare = run.starlette_app()
    apps = {"bare": lambda: bare, "raw": lambda: run.RawHeaderMiddleware(bare),
            "chain1": lambda: HttpWasmMiddleware(bare, [Guest(run.COPY_HEADER["WAT"], name="w0")]),
            "chain3": lambda: HttpWasmMiddleware(bare, [Guest(run.COPY_HEADER["WAT"], name=f"w{i}")
                                                        for i in range(3)])}
    app = apps[variant]()

    async def serve() -> None:
        await run.time_app(app, 200)
        await run.time_app(app, requests)

    asyncio.run(serve())


def count(variant: str, requests: int) -> int:
    """Instructions of one child process serving `requests` requests, as callgrind counts them."""
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/cg.out", sys.executable, __file__,
             "--child", variant, str(requests)], cwd=ROOT, capture_output=True, text=True, check=True)
    match = re.search(r"Collected : (\d+)", out.stderr)
    if match is None:
        raise RuntimeError(f"no callgrind total for {variant}: {out.stderr[-500:]}")
    return int(match.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", type=int, default=500, help="requests in the short run")
    parser.add_argument("--long", type=int, default=2500, help="requests in the long run")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_variant(args.child[0], int(args.child[1]))
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (Debian package valgrind)", file=sys.stderr)
        return 2
    os.environ.setdefault("PYTHONHASHSEED", "0")  # the same dict layouts in every child
    per_request = {}
    for variant in VARIANTS:
        short, long = count(variant, args.short), count(variant, args.long)
        per_request[variant] = (long - short) / (args.long - args.short)
    bare = per_request["bare"]
    print("| variant (callgrind, instructions per request) | count | added vs bare |")
    print("|---|---|---|")
    for variant, n in per_request.items():
        added = "" if variant == "bare" else f"+{(n - bare) / 1000:.1f}k ({(n - bare) / bare:.2f}x)"
        print(f"| {variant} | {n / 1000:.1f}k | {added} |")
    fixed = per_request["chain1"] - (per_request["chain3"] - per_request["chain1"]) / 2
    print(f"\none guest = {(fixed - bare) / 1000:.1f}k per request (fixed) "
          f"+ {(per_request['chain3'] - per_request['chain1']) / 2000:.1f}k per guest")
    return 0


if __name__ == "__main__":
    sys.exit(main())
