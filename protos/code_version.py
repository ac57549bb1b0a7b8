"""The version of freshrank's code that produced an artifact, for both tiers' lineage.

Why here: a base version and an online snapshot both record which code made them, and the
online tier must not reach into ``base_model`` for it. The answer is a hash of freshrank's
Python source (always available, also in a Ray job's uploaded working directory or an
installed wheel) plus the git commit when the source is a git checkout.

>>> code_version().split()[-1].startswith("src:")
True
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Sequence
from pathlib import Path

__all__ = ["SOURCE_PACKAGES", "code_version", "source_digest"]

#: The packages whose source is freshrank's code (beside each other on ``sys.path``).
SOURCE_PACKAGES: tuple[str, ...] = (
    "protos",
    "feature_store",
    "base_model",
    "online_layer",
    "serving",
)
_ROOT = Path(__file__).resolve().parent.parent


def source_digest(packages: Sequence[str] = SOURCE_PACKAGES, root: Path = _ROOT) -> str:
    """``src:<12 hex>``: a SHA-256 over the names and bytes of every ``.py`` in ``packages``."""
    digest = hashlib.sha256()
    for package in packages:
        folder = root / package
        for path in sorted(folder.rglob("*.py")) if folder.is_dir() else ():
            digest.update(path.relative_to(root).as_posix().encode())
            digest.update(path.read_bytes())
    return f"src:{digest.hexdigest()[:12]}"


def code_version(packages: Sequence[str] = SOURCE_PACKAGES, root: Path = _ROOT) -> str:
    """``git:<sha>[+dirty] src:<hash>`` in a git checkout, else ``src:<hash>``.

    ``+dirty`` means the packages' files differ from the commit (``git status`` over them).
    """
    src = source_digest(packages, root)
    folders = [str(root / p) for p in packages if (root / p).is_dir()]
    try:
        sha = _git(root, "rev-parse", "--short=12", "HEAD")
        dirty = _git(root, "status", "--porcelain", "--", *folders)
    except (OSError, subprocess.SubprocessError):
        return src
    return f"git:{sha}{'+dirty' if dirty else ''} {src}"


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=5, check=True
    ).stdout.strip()
