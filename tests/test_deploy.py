"""The deployment files, checked without a container engine: docker-compose.yml parses and names what
exists, the Dockerfile copies everything `pip install .` and the example configs need, and the
commands the compose services run work outside a container, from a folder holding only what the
image would hold."""

from __future__ import annotations

import glob
import json
import re
import shutil
import tomllib
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from http_wasm_asgi import load_config
from support import ROOT, docs
from support.procs import COMMAND, UVICORN, free_port, run, serving


def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's stages, each its steps from its FROM on."""
    found: list[list[tuple[str, str]]] = []
    for step in dockerfile():
        if step[0] == "FROM":
            found.append([])
        found[-1].append(step)
    return found


def copies(stage: int = -1) -> list[tuple[list[str], str]]:
    """Each COPY of the build context in a stage (the last: the image that runs) as (sources, destination),
    relative to the build context and to WORKDIR."""
    out = []
    for instruction, args in stages()[stage]:
        if instruction == "COPY" and not args.startswith("--from"):
            parts = args.split()
            out.append((parts[:-1], parts[-1]))
    return out


def stage_image(root: Path) -> Path:
    """What the image's WORKDIR holds: every COPY applied to an empty folder."""
    for sources, dest in copies():
        for source in sources:
            matches = sorted(glob.glob(source, root_dir=ROOT))
            assert matches, f"Dockerfile COPY {source}: nothing in the repository matches"
            for match in matches:
                src = ROOT / match
                target = root / dest / src.name if dest.endswith("/") or len(matches) > 1 or \
                    len(sources) > 1 else root / dest
                target.parent.mkdir(parents=True, exist_ok=True)
                if src.is_dir():
                    shutil.copytree(src, target, ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyc"))
                else:
                    shutil.copy2(src, target)
    return root


def test_compose_file_parses_and_describes_the_sidecar_deployment() -> None:
    services = compose()["services"]
    assert set(services) == {"upstream", "chain"}
    for service in services.values():
        assert service["build"] == "." and (ROOT / "Dockerfile").is_file()
        assert isinstance(service["command"], list)
    chain = services["chain"]
    assert chain["command"][:3] == ["http-wasm-asgi", "serve", "examples/sidecar.yaml"]
    assert chain["depends_on"] == ["upstream"] and chain["ports"] == ["8080:8080"]
    upstream_url = chain["command"][chain["command"].index("--upstream") + 1]
    port = services["upstream"]["command"][services["upstream"]["command"].index("--port") + 1]
    assert upstream_url == f"http://upstream:{port}"  # the upstream service, by its name on the compose network
    assert services["upstream"]["command"][:2] == ["uvicorn", "examples.upstream:app"]


def test_dockerfile_builds_the_wheel_with_a_compiler_and_runs_it_unprivileged_on_slim() -> None:
    build, image = stages()
    assert re.fullmatch(r"python:3\.1[1-9] AS build", build[0][1])  # the full image: it has a C compiler
    wheel = [args for instruction, args in build if instruction == "RUN" and "pip wheel" in args]
    assert len(wheel) == 1 and '".[standard,examples]"' in wheel[0]
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = {"pyproject.toml", "setup.py", pyproject["project"]["readme"], "LICENSE", "http_wasm_asgi"}
    copied = {src for sources, _ in copies(0) for src in sources}
    assert needed <= copied, needed - copied
    assert re.fullmatch(r"python:3\.1[1-9]-slim", image[0][1])
    install = next(args for instruction, args in image if instruction == "RUN" and "pip install" in args)
    assert "--no-index" in install and "_native.EXT is not None" in install  # only the wheels; native path on
    assert ("COPY", "--from=build /wheels /wheels") in image
    user = next(args for instruction, args in image if instruction == "USER")
    assert user.split(":")[0].isdigit() and int(user.split(":")[0]) >= 10000  # numeric: runAsNonRoot can check it
    env = dict(args.split("=", 1) for instruction, args in image if instruction == "ENV")
    assert env["HTTP_WASM_ASGI_CACHE_DIR"] == "/var/cache/http-wasm-asgi" and f"{env['HTTP_WASM_ASGI_CACHE_DIR']}" \
        in next(args for instruction, args in image if instruction == "VOLUME")
    sources = re.findall(r'"(http_wasm_asgi/[^"]+\.c)"', (ROOT / "setup.py").read_text())  # the native path's C
    assert sources and all(glob.glob(source, root_dir=ROOT) for source in sources), sources
    for sources, _ in copies(0) + copies():
        for source in sources:
            assert glob.glob(source, root_dir=ROOT), source
    cmd = json.loads(next(args for instruction, args in image if instruction == "CMD"))
    assert cmd[:2] == ["http-wasm-asgi", "serve"] and (ROOT / cmd[2]).is_file()
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "**/*.so", "**/__pycache__"} <= set(ignored)


def test_the_image_holds_every_file_the_example_configs_need(tmp_path: Path) -> None:
    image = stage_image(tmp_path / "srv")
    for config in ("examples/sidecar.yaml", "examples/chain.yaml", "examples/chain.toml"):
        for guest in load_config(image / config).guests:  # raises if a guest file is missing
            assert guest.path.resolve().is_relative_to(image.resolve())
    assert (image / "examples" / "upstream.py").is_file()
    result = run([COMMAND, "check", "examples/sidecar.yaml"], cwd=image)
    assert result.returncode == 0 and result.stdout.endswith("ok\n"), result.stderr


@pytest.mark.slow
@pytest.mark.servers
def test_the_compose_commands_work_outside_a_container(tmp_path: Path) -> None:
    """Run both services' commands as compose would, from the image's files, with the container
    network's names and ports swapped for local ones."""
    image = stage_image(tmp_path / "srv")
    services = compose()["services"]
    upstream_port, chain_port = free_port(), free_port()

    def local(command: list[str], port: int) -> list[str]:
        args = list(command)
        args[args.index("--port") + 1] = str(port)
        if "--upstream" in args:
            args[args.index("--upstream") + 1] = f"http://127.0.0.1:{upstream_port}"
        return [{"uvicorn": UVICORN, "http-wasm-asgi": COMMAND}[args[0]], *args[1:]]

    upstream_cmd, chain_cmd = local(services["upstream"]["command"], upstream_port), \
        local(services["chain"]["command"], chain_port)
    assert "--host" in chain_cmd and "--workers" in chain_cmd
    cache = {"HTTP_WASM_ASGI_CACHE_DIR": str(tmp_path / "cache")}
    with serving(upstream_cmd, upstream_port, cwd=image), \
            serving(chain_cmd, chain_port, cwd=image, env=cache) as chain, \
            httpx.Client(base_url=chain.url, timeout=10) as client:
        assert client.get("/x").status_code == 401
        r = client.post("/orders?id=3", content=b"{}", headers={"authorization": "Bearer demo-token"})
        assert r.status_code == 200 and r.headers["x-served-by"] == "http-wasm-sidecar"
        assert (r.json()["service"], r.json()["path"], r.json()["query"]) == ("upstream", "/orders", "id=3")
        out = chain.wait_for_output("chain loaded", count=3)  # the parent and the two workers of --workers 2
    assert out.count(f"in front of upstream http://127.0.0.1:{upstream_port}") == 3


@pytest.mark.parametrize("needed", ["docker compose up --build", "load balancer", "user 10001"])
def test_the_docs_present_compose_as_the_scale_out_path(needed: str) -> None:
    assert needed in docs.section("Docker and Compose")  # docs/deploy/docker.md
