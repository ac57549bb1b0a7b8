"""The Dockerfile installs what `make install` installs, and every command the manifests run
exists in that install (console script, subcommand and flags, or runnable module)."""

from __future__ import annotations

import fnmatch
import importlib.metadata
import importlib.util
import os
import pathlib
import re
import subprocess
import sys
import tomllib
from typing import Any

import pytest
from tests.infra.infra_kit import INFRA, REPO, commands

DOCKERFILE = REPO / "Dockerfile"
MAKEFILE = REPO / "Makefile"
PYTHONS = {"python", "python3", "python3.11"}
# Commands the manifests name that another issue builds; xfail (not strict) until they exist.
PENDING: dict[tuple[str, str], str] = {}


def makefile_var(name: str) -> str:
    match = re.search(rf"^{name}\s*\?=\s*(.+)$", MAKEFILE.read_text(), re.M)
    assert match, name
    return match.group(1).strip()


def dockerfile_arg(name: str) -> str:
    match = re.search(rf"^ARG {name}=(.*)$", DOCKERFILE.read_text(), re.M)
    assert match, name
    return match.group(1).strip()


def makefile_extras() -> set[str]:
    (spec,) = re.findall(r"pip install -q -e '\.\[([^\]]*)\]'", MAKEFILE.read_text())
    return set(spec.split(","))


def test_the_image_is_python_311_slim() -> None:
    assert dockerfile_arg("PYTHON_IMAGE") == "python:3.11-slim"
    assert re.findall(r"^FROM \$\{PYTHON_IMAGE\}", DOCKERFILE.read_text(), re.M)


def test_the_image_installs_torch_as_make_install_does() -> None:
    assert dockerfile_arg("TORCH_SPEC") == makefile_var("TORCH_SPEC") == "torch==2.13.0"
    text = DOCKERFILE.read_text()
    torch_at = text.index('"${TORCH_SPEC}"')
    package_at = text.index('pip install ".[${EXTRAS}]"')
    assert torch_at < package_at, "torch must be installed before the package pulls its own"


def test_the_image_installs_the_package_with_make_installs_extras() -> None:
    assert set(dockerfile_arg("EXTRAS").split(",")) == makefile_extras()
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert makefile_extras() <= set(extras)
    # `pip install .` (not -e): the wheel carries the built kernel and the generated code.
    assert 'pip install ".[${EXTRAS}]"' in DOCKERFILE.read_text()
    assert "pip install -e" not in DOCKERFILE.read_text()


def test_the_build_proves_the_kernel_and_the_generated_code_are_there() -> None:
    text = DOCKERFILE.read_text()
    setup = (REPO / "setup.py").read_text()
    (extension,) = re.findall(r'Extension\(\s*"([\w.]+)"', setup)
    check = re.search(r'RUN cd / && python -c "import ([^"]+)"', text)
    assert check, "no import check at build time"
    imported = {name.strip() for name in check.group(1).split(",")}
    assert extension in imported
    assert "protos.freshrank.v1.ranking_pb2_grpc" in imported
    assert "build-essential" in text  # a compiler for cythonize


def dockerignored(path: str) -> bool:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for pattern in patterns:
        pattern = pattern.lstrip("/")
        candidates = {pattern, pattern.removeprefix("**/")}
        parts = pathlib.PurePosixPath(path).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, c) for c in candidates for p in [path, *prefixes]):
            return True
    return False


def test_the_build_context_has_the_sources_and_no_host_build() -> None:
    for needed in ["pyproject.toml", "setup.py", "README.md", "online_layer/_ftrl.pyx",
                   "protos/freshrank/v1/ranking.proto", "protos/build.py", "infra/serve/config.yaml",
                   "serving/app.py", "base_model/train.py", "feature_store/feature_store.yaml"]:
        assert (REPO / needed).exists(), needed
        assert not dockerignored(needed), needed
    for host_built in ["online_layer/_ftrl.cpython-311-x86_64-linux-gnu.so", "online_layer/_ftrl.c",
                       "protos/freshrank/v1/ranking_pb2.py", "protos/freshrank/v1/ranking_pb2_grpc.py",
                       ".venv/bin/python", "serving/__pycache__/app.cpython-311.pyc", ".freshrank/registry"]:
        assert dockerignored(host_built), host_built


def test_the_manifests_name_the_image() -> None:
    images: set[str] = set()
    for path in INFRA.rglob("*.yaml"):
        images |= set(re.findall(r"image:\s*(\S+)", path.read_text()))
    assert images == {"freshrank:latest"}


# -- every command the manifests run -------------------------------------------------------

def invocations() -> list[tuple[str, str, list[str]]]:
    """(where, program, arguments) for every program the manifests and crontab start."""
    found = []
    for where, argv in commands():
        for i, token in enumerate(argv):
            program = os.path.basename(token)
            if token != program and not token.endswith(f"/bin/{program}"):
                continue  # a path such as /data/freshrank, not a program
            if program in PYTHONS | {"freshrank", "ray", "serve"}:
                # `ray job submit ... -- python -m ...`: both are checked, each on its own.
                rest = argv[i + 1 :]
                for stop in ("&&", ";", ">>", ">", "|"):
                    rest = rest[: rest.index(stop)] if stop in rest else rest
                found.append((where, "python" if program in PYTHONS else program, rest))
    return found


def _cases() -> list[Any]:
    cases = []
    for where, program, args in invocations():
        sub = next((a for a in args if not a.startswith("-")), "")
        marks = []
        if (program, sub) in PENDING:
            marks.append(pytest.mark.xfail(reason=PENDING[(program, sub)], strict=False))
        cases.append(pytest.param(program, args, id=f"{where}: {program} {sub}", marks=marks))
    return cases


def test_the_manifests_run_the_systems_entry_points() -> None:
    programs = {(program, next((a for a in args if not a.startswith("-")), "")) for _, program, args in invocations()}
    assert ("python", "base_model.train") in programs, "the weekly training"
    assert ("freshrank", "run") in programs, "the controller"
    assert ("freshrank", "train") in programs
    assert ("ray", "job") in programs


def test_the_console_scripts_exist() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["freshrank"] == "serving.cli:main"
    installed = {e.name for e in importlib.metadata.entry_points(group="console_scripts")}
    assert {"ray", "serve"} <= installed


def click_accepts(group: Any, name: str, args: list[str]) -> None:
    import click

    command = group
    while isinstance(command, click.Group) and args and not args[0].startswith("-"):
        sub = command.get_command(click.Context(command), args[0])
        assert sub is not None, f"{name}: no subcommand {args[0]!r}"
        name, command, args = f"{name} {args[0]}", sub, args[1:]
    command.make_context(name, list(args), resilient_parsing=False)


@pytest.mark.parametrize("program, args", _cases())
def test_every_command_a_manifest_runs_exists(program: str, args: list[str]) -> None:
    if program == "freshrank":
        from serving.cli import build_parser

        try:
            build_parser().parse_args(args)
        except SystemExit as stop:
            pytest.fail(f"freshrank {' '.join(args)}: refused ({stop.code})")
    elif program == "python":
        assert args[:1] == ["-m"], args
        module, flags = args[1], args[2:]
        spec = importlib.util.find_spec(module)
        assert spec is not None and spec.origin, module
        assert 'if __name__ == "__main__":' in pathlib.Path(spec.origin).read_text()
        top = module.split(".")[0]
        include = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
        assert any(fnmatch.fnmatch(top, pattern) for pattern in include), f"{top} is not installed"
        if module == "base_model.train":  # same flags as `freshrank train`, by design
            from serving.cli import build_parser

            build_parser().parse_args(["train", *flags])
            env = {**os.environ, "PYTHONPATH": str(REPO)}
            done = subprocess.run([sys.executable, "-m", module, "--help"], env=env,
                                  capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr[-2000:]
            for flag in (f.split("=")[0] for f in flags if f.startswith("--")):
                assert flag in done.stdout, f"python -m {module}: no {flag}"
    elif program == "ray":
        from ray.scripts.scripts import cli

        click_accepts(cli, "ray", args)
    elif program == "serve":
        from ray.serve.scripts import cli as serve_cli

        click_accepts(serve_cli, "serve", args)
    else:  # pragma: no cover
        pytest.fail(program)


@pytest.mark.parametrize("args", [["deploy", "infra/serve/config.yaml"], ["run", "infra/serve/config.yaml"]])
def test_the_serve_commands_in_the_docs_exist(args: list[str]) -> None:
    from ray.serve.scripts import cli as serve_cli

    assert f"serve {' '.join(args)}" in (INFRA / "serve" / "config.yaml").read_text() + (
        INFRA / "kuberay" / "README.md"
    ).read_text()
    click_accepts(serve_cli, "serve", args)
