"""A daemon thread that calls a function every ``interval_s`` seconds until stopped.

The learner's time-based triggers (a partial batch that waited long enough, a publish
every ``publish_every_s``) need a call to run; in a Ray actor none may come, so the
learner can tick itself (``OnlineLearner.start_ticker``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

logger = logging.getLogger(__name__)


class Ticker:
    """Calls ``tick()`` every ``interval_s`` seconds on a daemon thread; errors are logged."""

    def __init__(self, tick: Callable[[], object], interval_s: float, name: str) -> None:
        self._tick = tick
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self._tick()
            except Exception:
                logger.exception("%s failed", self._thread.name)

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout=timeout_s)
