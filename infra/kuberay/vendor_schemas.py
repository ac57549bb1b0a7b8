"""Vendor KubeRay's CRD schemas as JSON (run by hand when the pinned release changes).

    git --git-dir=<kuberay.git> show v1.7.0:ray-operator/config/crd/bases/ray.io_rayjobs.yaml \
        > /tmp/ray.io_rayjobs.yaml   # ... and the other CRDs
    python infra/kuberay/vendor_schemas.py /tmp/ray.io_*.yaml

For each CRD, the ``openAPIV3Schema`` of its stored version is written to
``schemas/<kind>.json``, compact, with the CRD file's sha256. String ``description``
annotations would be dropped (they take no part in validation; KubeRay 1.7.0's CRDs are
generated without them anyway); every other keyword is kept as published.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import sys

import yaml

HERE = pathlib.Path(__file__).resolve().parent


def _strip_descriptions(node: object) -> object:
    if isinstance(node, dict):
        return {
            key: _strip_descriptions(value)
            for key, value in node.items()
            if not (key == "description" and isinstance(value, str))
        }
    if isinstance(node, list):
        return [_strip_descriptions(value) for value in node]
    return node


def vendor(crd_path: pathlib.Path) -> pathlib.Path:
    raw = crd_path.read_bytes()
    crd = yaml.safe_load(raw)
    kind = crd["spec"]["names"]["kind"]
    (version,) = [v for v in crd["spec"]["versions"] if v.get("storage")]
    schema = _strip_descriptions(version["schema"]["openAPIV3Schema"])
    out = HERE / "schemas" / f"{kind}.json"
    document = {
        "x-freshrank-source": {
            "crd": crd_path.name,
            "group": crd["spec"]["group"],
            "version": version["name"],
            "sha256": hashlib.sha256(raw).hexdigest(),
        },
        **schema,  # type: ignore[dict-item]
    }
    out.write_text(json.dumps(document, sort_keys=True, separators=(",", ":")) + "\n")
    return out


if __name__ == "__main__":
    for argument in sys.argv[1:]:
        print(vendor(pathlib.Path(argument)))
