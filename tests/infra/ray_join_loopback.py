"""``ray start --address ...`` for a second node on the same loopback-only machine.

With ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (the switch that keeps every Ray socket on
127.0.0.1, ../shared/FACTS.md) ``ray start --address`` refuses to start: its CLI reads the
same switch as "multi-node clusters unsupported" and aborts. Without the switch the joining
node resolves 127.0.0.1 to the machine's other interface and never reaches the loopback GCS.
This runs Ray's own ``ray start`` unchanged, except that its CLI module alone sees the switch
as on (for that check); Ray itself, and every process it spawns, keeps the loopback setting.

    python tests/infra/ray_join_loopback.py start --address=127.0.0.1:PORT --block ...
"""

from __future__ import annotations

import os
import sys
import types

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

import ray.scripts.scripts as ray_cli  # noqa: E402

_real = ray_cli.ray_constants


class _CliConstants(types.ModuleType):
    ENABLE_RAY_CLUSTER = True

    def __getattr__(self, name: str) -> object:
        return getattr(_real, name)


ray_cli.ray_constants = _CliConstants("ray_constants_for_the_cli")  # type: ignore[assignment]

if __name__ == "__main__":
    sys.argv = ["ray", *sys.argv[1:]]
    sys.exit(ray_cli.main())
