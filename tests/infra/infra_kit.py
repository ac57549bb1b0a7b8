"""Reading infra/: every YAML document, the vendored KubeRay schemas, the commands named."""

from __future__ import annotations

import json
import pathlib
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
SCHEMAS = INFRA / "kuberay" / "schemas"
KUBERAY_GROUP = "ray.io/"


@dataclass(frozen=True)
class Document:
    path: pathlib.Path
    index: int
    body: dict[str, Any]

    @property
    def label(self) -> str:
        name = self.body.get("metadata", {}) or {}
        name = name.get("name") or name.get("generateName") or "?"
        return f"{self.path.relative_to(REPO)}#{self.index} {self.body.get('kind')}/{name}"


def yaml_files() -> list[pathlib.Path]:
    return sorted(p for p in INFRA.rglob("*") if p.suffix in {".yaml", ".yml"})


def documents() -> list[Document]:
    found = []
    for path in yaml_files():
        for index, body in enumerate(yaml.safe_load_all(path.read_text())):
            if isinstance(body, dict):
                found.append(Document(path, index, body))
    return found


def kubernetes_documents() -> list[Document]:
    return [d for d in documents() if "apiVersion" in d.body and "kind" in d.body]


def kuberay_documents() -> list[Document]:
    return [d for d in kubernetes_documents() if str(d.body["apiVersion"]).startswith(KUBERAY_GROUP)]


def closed(schema: Any) -> Any:
    """The schema as the API server applies it with strict field validation.

    A structural CRD schema prunes (or, with ``kubectl --validate=strict``, refuses) fields it
    does not declare; plain JSON Schema would accept them. Every object that declares
    ``properties`` and neither ``additionalProperties`` nor
    ``x-kubernetes-preserve-unknown-fields`` is closed, so a misspelt field fails here.
    """
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: closed(value) for key, value in schema.items()}
    if (
        isinstance(schema.get("properties"), dict)
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def load_schema(kind: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((SCHEMAS / f"{kind}.json").read_text())
    return schema


def containers(pod_spec: dict[str, Any]) -> list[dict[str, Any]]:
    return list(pod_spec.get("initContainers", [])) + list(pod_spec.get("containers", []))


def walk(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def commands() -> list[tuple[str, list[str]]]:
    """Every command line a manifest or crontab runs: (where, argv)."""
    found: list[tuple[str, list[str]]] = []
    for doc in kubernetes_documents():
        for node in walk(doc.body):
            if not isinstance(node, dict):
                continue
            if isinstance(node.get("entrypoint"), str):
                found.append((doc.label, shlex.split(node["entrypoint"])))
            if "image" in node and isinstance(node.get("name"), str):
                argv = list(node.get("command", [])) + list(node.get("args", []))
                if argv:
                    found.append((f"{doc.label} container {node['name']}", [str(a) for a in argv]))
    for crontab in INFRA.rglob("*.crontab"):
        for line in crontab.read_text().splitlines():
            fields = line.split()
            if len(fields) > 5 and not line.startswith("#") and "=" not in fields[0]:
                found.append((str(crontab.relative_to(REPO)), shlex.split(" ".join(fields[5:]))))
    return found
