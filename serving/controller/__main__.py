"""``python -m serving.controller`` is ``freshrank run`` (a Ray job, a KubeRay Deployment).

For example, on the cluster the app runs on::

    ray job submit -- python -m serving.controller --workspace /data/freshrank \
        --config /etc/freshrank/freshrank.toml

It takes the flags of ``freshrank run`` and exits with its codes (0 done, 2 bad input or
another controller holds the workspace's lock).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["main"]

PROG = "python -m serving.controller"


def main(argv: Sequence[str] | None = None) -> int:
    from serving.cli import main as freshrank

    args = list(sys.argv[1:] if argv is None else argv)
    return freshrank(["-v", *args], prog=PROG, command="run")


if __name__ == "__main__":
    sys.exit(main())
