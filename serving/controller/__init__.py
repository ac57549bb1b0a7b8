"""The live-loop controller, ``freshrank run``: one cycle is check -> features -> train ->
gate -> shadow -> canary -> promote, every step recorded in ``<registry>/controller/``.

Modules, one job each: ``config`` (``[controller]``), ``port`` (the admin calls it needs from
the running app, typed), ``store`` (state file, history, the one-controller lock),
``training`` (Ray job, subprocess or in-process training), ``verdicts`` (shadow and canary
judgements), ``data`` (features and triggers from the workspace), ``machine`` (the state
machine and its resume rules), ``metrics`` (Prometheus), ``command`` (``freshrank run``).
This package imports nothing heavy at import time: ``serving.settings`` imports ``config``.
"""

from serving.controller.config import ControllerConfig

__all__ = ["ControllerConfig"]
