"""deploy/kubernetes: every manifest validates against a pinned Kubernetes version (kubernetes-validate,
strict), the names, ports and paths they refer to exist (in each other, in the chain config, in the
image), and the Deployment's command, run from what the image holds with the ConfigMap at its mount
path, serves the app, answers its probes and stays within its memory request."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml

from http_wasm_asgi import load_config
from support import ROOT, docs
from support.ops import rss_mib
from support.procs import COMMAND, free_port, run, serving
from test_deploy import stage_image, stages

KUBERNETES_VERSION = "1.32.0"  # validated against this release's API schemas
FOLDER = ROOT / "deploy" / "kubernetes"
MIB = {"Mi": 1, "Gi": 1024}


def manifest(name: str) -> dict[str, Any]:
    data = yaml.safe_load((FOLDER / name).read_text())
    assert isinstance(data, dict)
    return data


def manifests() -> list[str]:
    return sorted(p.name for p in FOLDER.glob("*.yaml") if p.name != "kustomization.yaml")


def container() -> dict[str, Any]:
    containers = manifest("deployment.yaml")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def chain_config(image: Path) -> Path:
    """The ConfigMap's chain.yaml where the Deployment mounts it, in a folder holding what the image holds."""
    workdir = next(args for instruction, args in stages()[-1] if instruction == "WORKDIR")
    mounts = {m["name"]: m["mountPath"] for m in container()["volumeMounts"]}
    for name, kind, data in (("chain-config", "configmap.yaml", "data"), ("secrets", "secret.yaml", "stringData")):
        assert mounts[name].startswith(workdir + "/")
        for file, text in manifest(kind)[data].items():
            path = image / mounts[name].removeprefix(workdir + "/") / file
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    return image / mounts["chain-config"].removeprefix(workdir + "/") / "chain.yaml"


@pytest.mark.parametrize("name", manifests())
def test_each_manifest_is_valid_for_the_pinned_kubernetes_version(name: str) -> None:
    data = manifest(name)
    kubernetes_validate.validate(data, KUBERNETES_VERSION, strict=True)  # raises ValidationError


def test_the_kustomization_applies_every_manifest_and_names_the_image() -> None:
    kustomization = manifest("kustomization.yaml")
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == manifests()
    image = container()["image"]
    assert [entry["name"] for entry in kustomization["images"]] == [image.split(":")[0]]
    assert {m["kind"] for m in map(manifest, manifests())} == {"ConfigMap", "Secret", "Deployment", "Service",
                                                              "HorizontalPodAutoscaler", "PodDisruptionBudget"}


def test_names_ports_and_probes_refer_to_what_exists(tmp_path: Path) -> None:
    deployment, service, hpa = manifest("deployment.yaml"), manifest("service.yaml"), manifest("hpa.yaml")
    config = load_config(chain_config(stage_image(tmp_path / "srv")))
    ports = {p["name"]: p["containerPort"] for p in container()["ports"]}
    assert ports == {"http": config.port, "metrics": config.metrics_port}
    assert config.host == config.metrics_host == "0.0.0.0"  # reachable from the kubelet and the Service
    probes = {kind: container()[kind]["httpGet"] for kind in ("readinessProbe", "livenessProbe")}
    assert probes == {"readinessProbe": {"path": "/readyz", "port": "metrics"},
                      "livenessProbe": {"path": "/healthz", "port": "metrics"}}
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == labels == service["spec"]["selector"]
    assert {p["targetPort"] for p in service["spec"]["ports"]} == set(ports)
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": deployment["metadata"]["name"]}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["chain-config"]["configMap"]["name"] == manifest("configmap.yaml")["metadata"]["name"]
    assert volumes["secrets"]["secret"]["secretName"] == manifest("secret.yaml")["metadata"]["name"]
    assert manifest("pdb.yaml")["spec"]["selector"]["matchLabels"] == labels
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > config.shutdown_timeout  # SIGTERM's drain ends before the kubelet kills the pod
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == config.metrics_port


@pytest.mark.slow
@pytest.mark.servers
def test_the_deployment_command_serves_from_the_image_within_its_memory_request(tmp_path: Path) -> None:
    image = stage_image(tmp_path / "srv")
    config = chain_config(image)
    command = container()["command"]
    assert command[:2] == ["http-wasm-asgi", "serve"] and (image / command[2]).resolve() == config.resolve()
    assert run([COMMAND, "check", command[2]], cwd=image).returncode == 0
    port, metrics_port = free_port(), free_port()
    local = [COMMAND, *command[1:], "--host", "127.0.0.1", "--port", str(port), "--metrics-port", str(metrics_port)]
    with serving(local, port, cwd=image, env={"HTTP_WASM_ASGI_CACHE_DIR": str(tmp_path / "cache")},
                 ready_path="/whoami") as server, httpx.Client(timeout=10) as client:
        metrics = f"http://127.0.0.1:{metrics_port}"
        assert client.get(metrics + "/readyz").status_code == 200
        assert client.get(metrics + "/healthz").status_code == 200
        assert client.get(server.url + "/whoami").status_code == 401
        for _ in range(300):
            r = client.get(server.url + "/api/whoami?x=1", headers={"authorization": "Bearer demo-token"})
            assert r.status_code == 200 and r.headers["x-powered-by"] == "http-wasm"
        assert json.loads(r.text)["path"] == "/whoami"
        assert "http_wasm_guest_calls_total" in client.get(metrics + "/metrics").text
        rss = rss_mib(server.proc.pid)
    requested = container()["resources"]["requests"]["memory"]
    limit = container()["resources"]["limits"]["memory"]
    assert rss < int(requested[:-2]) * MIB[requested[-2:]] < int(limit[:-2]) * MIB[limit[-2:]], (rss, requested)


def test_the_pod_runs_unprivileged_on_a_read_only_root_with_its_cache_on_an_empty_dir(tmp_path: Path) -> None:
    pod = manifest("deployment.yaml")["spec"]["template"]["spec"]
    image = stages()[-1]
    user = next(args for instruction, args in image if instruction == "USER").split(":")
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert [str(pod["securityContext"]["runAsUser"]), str(pod["securityContext"]["runAsGroup"])] == user
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container()["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                              "capabilities": {"drop": ["ALL"]}}
    mounts = {m["mountPath"]: m["name"] for m in container()["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    cache = dict(args.split("=", 1) for instruction, args in image if instruction == "ENV")["HTTP_WASM_ASGI_CACHE_DIR"]
    assert "emptyDir" in volumes[mounts[cache]] and "emptyDir" in volumes[mounts["/tmp"]]  # the writable places
    limit = volumes[mounts[cache]]["emptyDir"]["sizeLimit"]
    config = load_config(chain_config(stage_image(tmp_path / "srv")))
    assert config.cache_max_size is not None and config.cache_max_size < int(limit[:-2]) * MIB[limit[-2:]] * 2**20
    assert b"demo-token" not in (FOLDER / "configmap.yaml").read_bytes()  # the token is the Secret's
    assert config.guests[2].options["config"] == manifest("secret.yaml")["stringData"]["auth-token"].encode()


def test_the_readme_says_how_to_build_apply_and_scrape() -> None:
    section = docs.section("Kubernetes")  # docs/deploy/kubernetes.md
    image = container()["image"]
    for needed in (f"docker build -t {image} .", "kubectl apply -k deploy/kubernetes", "/metrics", "/readyz",
                   "/healthz", "tests/test_kubernetes.py"):
        assert needed in section, needed
