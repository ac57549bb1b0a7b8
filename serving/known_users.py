"""The users the manipulation guard treats as established: those of every base served here.

The guard (``online_layer.defences.FeedbackGuard``) never counts a user a base was trained
on as new, so a restart does not make every real user a stranger. The learner is built with
the first champion's vocabulary; a promoted (or rolled-back-to) base was trained on a newer
window, whose users are just as real. ``KnownUsers`` is the one callable the learner and the
canary's layer hold, and ``BaseSwitch`` adds each new base's vocabulary to it. Users of an
older base stay known: an account the system has served is not a made-up one.
"""

from __future__ import annotations

import threading
from collections.abc import Container

__all__ = ["KnownUsers"]


class KnownUsers:
    """``known(user_id) -> bool`` over the vocabularies added so far (thread-safe)."""

    def __init__(self, *vocabularies: Container[str]) -> None:
        self._vocabularies: tuple[Container[str], ...] = vocabularies
        self._lock = threading.Lock()

    @property
    def vocabularies(self) -> tuple[Container[str], ...]:
        return self._vocabularies

    def add(self, vocabulary: Container[str]) -> None:
        """Also know ``vocabulary``'s users (a base's ``users``); adding one twice is a no-op."""
        with self._lock:
            if not any(v is vocabulary for v in self._vocabularies):
                self._vocabularies = (*self._vocabularies, vocabulary)

    def __call__(self, user_id: str) -> bool:
        return any(user_id in vocabulary for vocabulary in self._vocabularies)
