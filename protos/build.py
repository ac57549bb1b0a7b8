"""Generate the Python gRPC code for ``protos/freshrank/v1/ranking.proto``.

Why a module and not a Makefile line: ``setup.py`` runs it at install time (so a fresh
``pip install`` always has current code) and the staleness test runs it into a temporary
directory and compares, so generated code can never drift from the proto unnoticed.

The proto is compiled with the repository root as include path, so generated modules import
each other as ``protos.freshrank.v1...``; the wire names stay ``freshrank.v1.Ranker``.
"""

from __future__ import annotations

import pathlib
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_FILES = ("protos/freshrank/v1/ranking.proto",)
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generated_paths(out_dir: pathlib.Path) -> list[pathlib.Path]:
    """The files ``generate(out_dir)`` writes, in a stable order."""
    paths: list[pathlib.Path] = []
    for proto in PROTO_FILES:
        stem = proto[: -len(".proto")]
        paths.extend(out_dir / f"{stem}{suffix}" for suffix in GENERATED_SUFFIXES)
    return paths


def generate(out_dir: pathlib.Path = REPO_ROOT) -> list[pathlib.Path]:
    """Compile every proto into ``out_dir`` (default: in place) and return the files written.

    Raises:
        RuntimeError: protoc reported an error (its message is on stderr).
    """
    from grpc_tools import protoc  # build-time dependency only
    import importlib.resources

    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{REPO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(REPO_ROOT / p) for p in PROTO_FILES),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed for {PROTO_FILES}")
    return generated_paths(out_dir)


if __name__ == "__main__":
    for path in generate(pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else REPO_ROOT):
        print(path)
