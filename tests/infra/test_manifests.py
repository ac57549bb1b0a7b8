"""Every KubeRay manifest in infra/ validates against the pinned CRD schemas (KubeRay v1.7.0,
vendored in infra/kuberay/schemas/), the RayService serves what infra/serve/config.yaml
serves, and no manifest carries a secret."""

from __future__ import annotations

import copy
import re
from typing import Any

import jsonschema
import pytest
import yaml
from tests.infra.infra_kit import (
    INFRA,
    SCHEMAS,
    Document,
    closed,
    containers,
    kuberay_documents,
    kubernetes_documents,
    load_schema,
    walk,
)

SERVE_CONFIG = INFRA / "serve" / "config.yaml"
KUBERAY_KINDS = {"RayCluster", "RayJob", "RayService", "RayCronJob"}
KUBERAY_COMMIT = "59d663aeec13760646da3db9c1cf8cfe883e30b7"  # tag v1.7.0
DOCS = kuberay_documents()


def errors(body: dict[str, Any]) -> list[str]:
    schema = closed(load_schema(body["kind"]))
    validator = jsonschema.Draft202012Validator(schema)
    return [
        f"{'/'.join(str(p) for p in e.absolute_path)}: {e.message[:200]}"
        for e in validator.iter_errors(body)
    ]


def rayservice() -> Document:
    (doc,) = [d for d in DOCS if d.body["kind"] == "RayService"]
    return doc


def cluster_specs(doc: Document) -> list[dict[str, Any]]:
    spec = doc.body["spec"]
    found = []
    for node in walk(spec):
        if isinstance(node, dict):
            for key in ("rayClusterSpec", "rayClusterConfig"):
                if isinstance(node.get(key), dict):
                    found.append(node[key])
    return found


def test_the_schemas_are_the_pinned_release() -> None:
    assert {p.stem for p in SCHEMAS.glob("*.json")} == KUBERAY_KINDS
    readme = (SCHEMAS.parent / "README.md").read_text()
    assert "v1.7.0" in readme and KUBERAY_COMMIT in readme
    for kind in KUBERAY_KINDS:
        source = load_schema(kind)["x-freshrank-source"]
        assert (source["group"], source["version"]) == ("ray.io", "v1")


def test_the_system_has_its_kuberay_manifests() -> None:
    kinds = sorted(d.body["kind"] for d in DOCS)
    assert kinds.count("RayService") == 1
    assert {"RayJob", "RayCronJob"} <= set(kinds)
    for doc in DOCS:
        assert doc.body["apiVersion"] == "ray.io/v1", doc.label
        assert doc.body["kind"] in KUBERAY_KINDS, f"{doc.label}: no vendored schema"


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: d.label)
def test_each_manifest_validates_against_its_crd_schema(doc: Document) -> None:
    assert errors(doc.body) == []


@pytest.mark.parametrize(
    "where, bad",
    [
        (("spec", "upgradeStrategy"), {"typ": "NewCluster"}),  # misspelt field
        (("spec", "rayClusterConfig", "authOptions"), {"mode": "tokens"}),  # not in the enum
        (("spec", "rayClusterConfig", "workerGroupSpecs"), [{"groupName": "serve"}]),  # no template
        (("spec", "rayClusterDeletionDelaySeconds"), -1),  # below the minimum
        (("spec", "serveConfigV2"), {"applications": []}),  # must be a YAML string
    ],
)
def test_the_validation_refuses_a_broken_rayservice(where: tuple[str, ...], bad: Any) -> None:
    body = copy.deepcopy(rayservice().body)
    node = body
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = bad
    assert errors(body)


def test_the_embedded_serve_config_is_infra_serve_config_yaml_in_the_cluster() -> None:
    from ray.serve.schema import ServeDeploySchema

    from serving import app
    from serving.config import ServingConfig

    embedded = yaml.safe_load(rayservice().body["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(embedded)
    local = yaml.safe_load(SERVE_CONFIG.read_text())
    # The same system: everything but the paths (args) is equal.
    assert {k: v for k, v in embedded.items() if k != "applications"} == {
        k: v for k, v in local.items() if k != "applications"
    }
    (cluster_app,) = embedded["applications"]
    (local_app,) = local["applications"]
    assert {k: v for k, v in cluster_app.items() if k != "args"} == {
        k: v for k, v in local_app.items() if k != "args"
    }
    assert set(cluster_app["args"]) <= {"config", "workspace"}
    assert cluster_app["args"]["workspace"].startswith("/")
    # ...and both are what the code builds (as tests/serving/test_serve_config.py checks).
    assert embedded["grpc_options"]["grpc_servicer_functions"] == app.SERVICERS
    assert cluster_app["name"] == ServingConfig().app_name
    module, _, attribute = cluster_app["import_path"].partition(":")
    assert (module, attribute) == (app.__name__, app.app_builder.__name__)
    assert embedded["grpc_options"]["port"] == ServingConfig().grpc_port


def test_the_rayservice_upgrades_without_downtime_and_probes_its_pods() -> None:
    spec = rayservice().body["spec"]
    assert spec["upgradeStrategy"]["type"] in {"NewCluster", "NewClusterWithIncrementalUpgrade"}
    cluster = spec["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:
        for container in containers(group["template"]["spec"]):
            for field in ("readinessProbe", "livenessProbe"):
                assert field in container, f"{container['name']}: no {field}"
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][bound])
    grpc_port = yaml.safe_load(spec["serveConfigV2"])["grpc_options"]["port"]
    ports = spec["serveService"]["spec"]["ports"]
    assert [p["port"] for p in ports] == [grpc_port]


def test_ray_token_auth_is_on_in_every_cluster() -> None:
    for doc in DOCS:
        specs = cluster_specs(doc)
        assert specs, doc.label
        for spec in specs:
            auth = spec["authOptions"]
            assert auth.get("mode", "token") == "token", doc.label
            assert auth["secretName"] == "freshrank-ray-token", doc.label


def test_the_dashboard_and_job_api_stay_inside_the_cluster() -> None:
    for doc in DOCS:
        for spec in cluster_specs(doc):
            head = spec["headGroupSpec"]
            assert head.get("serviceType", "ClusterIP") == "ClusterIP", doc.label
            assert not head.get("enableIngress", False), doc.label
    serve_service = rayservice().body["spec"]["serveService"]["spec"]
    assert serve_service.get("type", "ClusterIP") == "ClusterIP"
    for doc in kubernetes_documents():
        if doc.body["kind"] in {"Service", "Ingress"}:
            assert doc.body.get("spec", {}).get("type", "ClusterIP") == "ClusterIP", doc.label
    policies = [d for d in kubernetes_documents() if d.body["kind"] == "NetworkPolicy"]
    head_policy = [p for p in policies if p.body["spec"]["podSelector"]["matchLabels"].get("ray-node") == "head"]
    assert head_policy, "no NetworkPolicy guards the RayService head"


def test_the_ingress_credential_reaches_every_serving_node_from_a_secret() -> None:
    cluster = rayservice().body["spec"]["rayClusterConfig"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        for container in containers(group["template"]["spec"]):
            env = {e["name"]: e for e in container.get("env", [])}
            entry = env["FRESHRANK_INGRESS_TOKEN"]
            assert "value" not in entry
            assert entry["valueFrom"]["secretKeyRef"]["name"] == "freshrank-ingress-token"


SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|API_KEY|ACCESS_KEY", re.I)
# A run of 24+ letters and digits (both) with no separator a name would have: hex, base64.
LITERAL = re.compile(r"(?<![\w-])(?=[A-Za-z0-9+]*[0-9])(?=[A-Za-z0-9+]*[A-Za-z])[A-Za-z0-9+]{24,}={0,2}")


@pytest.mark.parametrize("doc", kubernetes_documents(), ids=lambda d: d.label)
def test_no_manifest_carries_a_secret_value(doc: Document) -> None:
    assert doc.body["kind"] != "Secret", f"{doc.label}: Secrets are created out of band"
    for node in walk(doc.body):
        if isinstance(node, dict) and isinstance(node.get("name"), str) and "value" in node:
            assert not SECRET_NAME.search(node["name"]) or node["name"] == "RAY_AUTH_MODE", (
                f"{doc.label}: {node['name']} has a literal value; use valueFrom.secretKeyRef"
            )
        if isinstance(node, str):
            assert not LITERAL.search(node), f"{doc.label}: {node!r} looks like a secret"


def test_no_file_in_infra_carries_a_secret_value() -> None:
    for path in INFRA.rglob("*"):
        if path.is_file() and SCHEMAS not in path.parents and path.suffix != ".json":
            for line in path.read_text().replace(KUBERAY_COMMIT, "<pinned>").splitlines():
                assert not LITERAL.search(line), f"{path}: {line!r}"


def test_the_secret_check_can_fail() -> None:
    body: dict[str, Any] = {"env": [{"name": "RAY_AUTH_TOKEN", "value": "x"}], "arg": "--token 3f9a2b7c1d8e4f6a0b5c9d2e7f1a"}
    assert SECRET_NAME.search(body["env"][0]["name"])
    assert LITERAL.search(body["arg"])


def test_every_python_probe_compiles() -> None:
    probes = 0
    for doc in kubernetes_documents():
        for node in walk(doc.body):
            if isinstance(node, dict) and isinstance(node.get("exec"), dict):
                command = node["exec"].get("command", [])
                if command[:2] == ["python", "-c"]:
                    compile(command[2], f"{doc.label} probe", "exec")
                    probes += 1
    assert probes >= 1
