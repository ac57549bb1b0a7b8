"""The Ray job entry point: ``python -m base_model.train`` is ``freshrank train``.

For ``ray job submit`` and the manifests in ``infra/training/``::

    ray job submit --working-dir . -- python -m base_model.train \
        --training-set /abs/path/train.parquet --registry /abs/path/registry --as-of data-end

It takes the flags of ``freshrank train`` (``python -m base_model.train --help`` lists
them), reads the same settings file (``--config``, else ``$FRESHRANK_CONFIG``) and exits
with the same codes: 0 trained, 2 bad input or settings, 3 blocked by the data gates. It
joins the job's cluster through ``$RAY_ADDRESS`` (or ``--ray-address``), or starts a
loopback one when run by hand. Logging is at INFO (``-v``) unless told otherwise.

This module only runs the command; the library is ``base_model.training``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["main"]

PROG = "python -m base_model.train"


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``freshrank train`` with ``argv`` (default: this process's arguments)."""
    from serving.cli import main as freshrank

    args = list(sys.argv[1:] if argv is None else argv)
    return freshrank(["-v", *args], prog=PROG, command="train")


if __name__ == "__main__":
    sys.exit(main())
