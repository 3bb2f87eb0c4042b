"""Rule sets for the WAF guest (guests/go/waf): real attack rules, then generated filler rules.

    generate(count)  -> {"rules": [...]}: ATTACK_RULES first, then count - len(ATTACK_RULES)
                        generated rules (deterministic: same arguments, same rules)
    heavy()          -> generate(HEAVY_COUNT): the rule set that makes the guest as heavy as a
                        WAF with a real rule set (Coraza with the OWASP core rule set: init of
                        ~200 ms, ~75 MiB of linear memory)

    python guests/go/waf/rules.py [COUNT] > rules.json   the config as JSON (default: HEAVY_COUNT rules)
    python guests/go/waf/rules.py --measure [COUNT]      what it costs the guest (needs the package)

From tests or the benchmark (guests/ is not a package), load this file by path:

    spec = importlib.util.spec_from_file_location("waf_rules", ROOT / "guests/go/waf/rules.py")
    rules = importlib.util.module_from_spec(spec); spec.loader.exec_module(rules)
    Guest(ROOT / "guests/go/waf/waf.wasm", config=rules.heavy(), memory_limit=256 * 1024 * 1024)

The attack rules block SQL injection (`?id=1' OR '1'='1`, `union select`, `sleep(5)`), XSS
(`<script>alert(1)</script>`, `onerror=`, `javascript:`), path traversal (`../../etc/passwd`,
also percent-encoded), restricted files (`/.git/`, `/.env`), command injection and scanners'
user agents. The generated rules look like a real rule set's: regex rules (keyword lists with
word boundaries, function calls, tags, assignments, script names, commands and options) and
phrase lists (the @pm operator), but their words are made up, with a 'q', 'x' or 'z' syllable,
so they match no normal traffic. Most are phrase rules: a regex costs the guest's init ~0.15 ms
to compile, a phrase only its states in the prefilter's automaton (1 KiB each).

heavy(), measured on a loaded 2-core machine (wasmtime 50, Go 1.27.3) with
`python guests/go/waf/rules.py --measure`:
    3000 rules (12 attack rules: 10 regex, 2 phrase lists; generated: 905 regex, 2083 phrase rules),
    393 KB of JSON, a prefilter automaton of ~54,500 states;
    init (_initialize) of a new instance: 309-385 ms of CPU (wall 440-630 ms under load);
    first instantiation with the compiled module cached: 640-1080 ms wall (under load);
    linear memory after init: 73.5 MiB (deterministic);
    a clean POST with a small JSON body: +0.23-0.28 ms of CPU over the bare app.
Targets: init >= 150 ms, memory >= 50 MiB and well under 120 MiB.
"""

from __future__ import annotations

import json
import random
import sys
from typing import Any

HEAVY_COUNT = 3000

# Real attack patterns, written for this repo (ids in the style of the core rule set's ranges).
ATTACK_RULES: list[dict[str, Any]] = [
    {"id": 930100, "target": "uri|args|body", "action": "deny",
     "regex": r"(?i)(?:\.\.[/\\]|\.\.%(?:2f|5c)|%2e%2e(?:[/\\]|%2f|%5c))"},
    {"id": 930120, "target": "uri|args|body", "action": "deny",
     "regex": r"(?i)(?:/etc/(?:passwd|shadow|group|hosts)\b|/proc/self/(?:environ|cmdline)|\bwin\.ini\b)"},
    {"id": 932100, "target": "args|body", "action": "deny",
     "regex": r"(?i)(?:;|\|\|?|&&|`|\$\()\s*(?:cat|wget|curl|bash|nc|python|perl)\s"},
    {"id": 941100, "target": "args|uri|headers|body", "action": "deny",
     "regex": r"(?i)<script[^>]*>"},
    {"id": 941110, "target": "args|headers|body", "action": "deny",
     "regex": r"(?i)\bon(?:error|load|click|mouseover|focus|blur|submit)\s*="},
    {"id": 941120, "target": "args|headers|body", "action": "deny",
     "regex": r"(?i)\bjavascript\s*:"},
    {"id": 942100, "target": "args|headers|body", "action": "deny",
     "regex": r"""(?i)['"]\s*(?:or|and)\s+['"]?[\w-]+['"]?\s*(?:=|<|>|\blike\b)"""},
    {"id": 942110, "target": "args|headers|body", "action": "deny",
     "regex": r"(?i)\bunion\b[\s(]+(?:all\s+)?select\b"},
    {"id": 942120, "target": "args|body", "action": "deny",
     "regex": r"(?i);\s*(?:drop|delete|insert|update|shutdown|truncate)\s+\w"},
    {"id": 942130, "target": "args|headers|body", "action": "deny",
     "regex": r"(?i)\b(?:sleep|benchmark|pg_sleep)\s*\(\s*\d|\bwaitfor\s+delay\b"},
    {"id": 930130, "target": "uri", "action": "deny",
     "phrases": ["/.git/", "/.svn/", "/.env", "/.htaccess", "/.htpasswd", "/web.config", "/.aws/credentials",
                 "/.ssh/", "/wp-config.php", "/.docker/config.json", "/id_rsa"]},
    {"id": 913100, "target": "headers", "action": "deny",
     "phrases": ["sqlmap", "nikto", "nessus", "masscan", "dirbuster", "wpscan", "acunetix", "nmap scripting engine"]},
]

# Syllables of the made-up words; every word gets a 'q', 'x' or 'z' syllable, which keeps it
# away from the words of normal requests.
_SYLLABLES = ["ka", "lo", "mi", "nu", "ro", "ta", "vel", "dor", "sin", "gar", "bre", "tul",
              "fen", "mar", "pol", "hen", "wic", "jun", "sar", "tem", "lin", "cob", "dru", "ast"]
_RARE = ["qu", "xa", "zo", "qe", "xi", "zu", "oqu", "yx", "zat", "quor"]
_EXTENSIONS = ["php", "asp", "aspx", "jsp", "cgi", "pl", "cfm", "shtml"]


def _word(rng: random.Random) -> str:
    parts = [rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))]
    parts.insert(rng.randrange(len(parts) + 1), rng.choice(_RARE))
    return "".join(parts)


def _words(rng: random.Random, n: int) -> str:
    words: set[str] = set()
    while len(words) < n:
        words.add(_word(rng))
    return "|".join(sorted(words))


def _filler_regex(rng: random.Random, words_per_rule: int) -> str:
    words = _words(rng, words_per_rule)
    shape = rng.randrange(6)
    if shape == 0:  # a keyword list
        return rf"(?i)\b(?:{words})\b"
    if shape == 1:  # a function call
        return rf"(?i)\b(?:{words})\s*\(\s*[\w'\"]"
    if shape == 2:  # a tag
        return rf"(?i)<\s*(?:{words})[\s/>]"
    if shape == 3:  # an assignment
        return rf"(?i)\b(?:{words})\s*=\s*['\"]?[\w.-]{{3,}}"
    if shape == 4:  # a script or file name
        ext = "|".join(rng.sample(_EXTENSIONS, 3))
        return rf"(?i)/(?:{words})\.(?:{ext})\b"
    return rf"(?i)(?:{words})(?:\s*[;|&]|\s+(?:-{{1,2}}\w+))"  # a command and its option


def generate(count: int, *, seed: int = 1, words_per_rule: int = 3, phrase_share: float = 0.7,
             phrases_per_rule: int = 6) -> dict[str, Any]:
    """The config {"rules": [...]}: ATTACK_RULES, then generated rules up to `count` in all.

    A `phrase_share` of the generated rules are phrases rules of `phrases_per_rule` words, the
    others regex rules of 1 to `words_per_rule` words.
    """
    if count < len(ATTACK_RULES):
        raise ValueError(f"count must be at least {len(ATTACK_RULES)} (the attack rules)")
    rng = random.Random(seed)
    targets = ["args|body", "args|headers|body", "uri|args", "args|uri|headers|body", "headers", "body"]
    rules = [dict(rule) for rule in ATTACK_RULES]
    for n in range(count - len(ATTACK_RULES)):
        rule: dict[str, Any] = {"id": 100000 + n, "target": rng.choice(targets), "action": "deny"}
        if rng.random() < phrase_share:
            rule["phrases"] = _words(rng, phrases_per_rule).split("|")
        else:
            rule["regex"] = _filler_regex(rng, rng.randint(1, words_per_rule))
        rules.append(rule)
    return {"rules": rules}


def heavy() -> dict[str, Any]:
    """The heavy rule set (HEAVY_COUNT rules)."""
    return generate(HEAVY_COUNT)


def measure(count: int = HEAVY_COUNT, instances: int = 5, requests: int = 300) -> None:
    """Print what a rule set costs the WAF guest: init time, memory after init, time per request.

    Needs the package (http_wasm_asgi) and guests/go/waf/waf.wasm; everything else here is stdlib only.
    """
    import asyncio
    import inspect
    import statistics
    import tempfile
    import time
    from pathlib import Path

    import httpx

    from http_wasm_asgi import Guest, HttpWasmMiddleware
    from http_wasm_asgi.testing import echo_app

    wasm = Path(__file__).resolve().parent / "waf.wasm"
    config = generate(count)
    options: dict[str, Any] = {"config": config, "memory_limit": 256 * 1024 * 1024, "call_timeout": 60.0}
    if "snapshot" in inspect.signature(Guest).parameters:
        options["snapshot"] = False  # measure the guest's own init, every time
    print(f"{len(config['rules'])} rules, {len(json.dumps(config, separators=(',', ':')))} bytes of JSON")
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        Guest(wasm, cache_dir=cache, **options).close()
        print(f"Guest(): compile + first instantiation: {(time.perf_counter() - start) * 1000:.0f} ms")
        start = time.perf_counter()
        guest = Guest(wasm, cache_dir=cache, **options)
        print(f"Guest(), compiled module cached: first instantiation: {(time.perf_counter() - start) * 1000:.0f} ms")
    walls, cpus, sizes = [], [], set()
    for _ in range(instances):
        wall, cpu = time.perf_counter(), time.thread_time()
        instance = guest.new_instance()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.thread_time() - cpu)
        sizes.add(instance.memory_size())
        instance.close()
    print(f"init of {instances} more instances: wall median {statistics.median(walls) * 1000:.0f} ms, "
          f"CPU min {min(cpus) * 1000:.0f} / median {statistics.median(cpus) * 1000:.0f} ms")
    print("linear memory after init: " + ", ".join(f"{size / 2**20:.1f} MiB" for size in sorted(sizes)))

    async def per_request(app: Any) -> float:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://measure") as client:
            async def one() -> None:
                r = await client.post("/products/42", params={"color": "red", "size": "10"},
                                      headers={"user-agent": "Mozilla/5.0 (X11; Linux x86_64)"},
                                      json={"comment": "a clean comment about the product", "qty": 3})
                assert r.status_code == 200, r.text
            for _ in range(20):
                await one()
            cpu = time.process_time()
            for _ in range(requests):
                await one()
            return (time.process_time() - cpu) / requests

    bare = asyncio.run(per_request(echo_app))
    waf = asyncio.run(per_request(HttpWasmMiddleware(echo_app, guests=[guest])))
    print(f"per clean request (POST, JSON body): {(waf - bare) * 1000:.2f} ms of CPU more than the bare app "
          f"({bare * 1000:.2f} ms)")
    guest.close()


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--measure"]:
        measure(int(args[1]) if len(args) > 1 else HEAVY_COUNT)
        sys.exit(0)
    json.dump(generate(int(args[0]) if args else HEAVY_COUNT), sys.stdout, separators=(",", ":"))
    sys.stdout.write("\n")
