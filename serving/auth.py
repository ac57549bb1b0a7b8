"""Who may do what at the ingress: a bearer token for Feedback and every admin action.

Why a shared token and not mTLS: the callers of Feedback are a handful of the team's own
services; a token in gRPC metadata (``authorization: Bearer <token>``) is what their gRPC
clients already send, and it is checked in one place, the ingress, before any work. Rank may
stay open (configurable) because it changes nothing.

The token comes from the environment (``FRESHRANK_INGRESS_TOKEN``) or a file named in the
settings (``serving.token_file``, e.g. a mounted Kubernetes secret); never from the TOML
itself, and it is never logged: only its SHA-256 prefix appears in ``describe``.

>>> policy = AccessPolicy(token="s3cret", open_rpcs=frozenset({"Rank"}))
>>> policy.check("Rank", ())
>>> policy.check("Feedback", (("authorization", "Bearer s3cret"),))
>>> try:
...     policy.check("Feedback", (("authorization", "Bearer wrong"),))
... except Unauthenticated as error:
...     print(error)
Feedback needs a valid credential: send metadata 'authorization: Bearer <token>'
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from protos.errors import FailedPrecondition, Unauthenticated

__all__ = ["TOKEN_ENV", "AccessPolicy", "load_token"]

TOKEN_ENV = "FRESHRANK_INGRESS_TOKEN"
_BEARER = "bearer "


def load_token(token_file: str = "", environ: Mapping[str, str] | None = None) -> str | None:
    """The ingress token: ``$FRESHRANK_INGRESS_TOKEN``, else the first line of ``token_file``.

    Returns None when neither is set (then only open rpcs can be called).
    """
    env = os.environ if environ is None else environ
    token = env.get(TOKEN_ENV, "").strip()
    if token:
        return token
    if token_file:
        path = Path(token_file)
        try:
            token = path.read_text(encoding="utf-8").splitlines()[0].strip()
        except (OSError, IndexError) as error:
            raise FailedPrecondition(f"serving.token_file {token_file!r} cannot be read: {error}") from error
        if not token:
            raise FailedPrecondition(f"serving.token_file {token_file!r} is empty")
        return token
    return None


@dataclass(frozen=True)
class AccessPolicy:
    """Which rpcs are open, and the token the others need (None: they are closed to all)."""

    token: str | None
    open_rpcs: frozenset[str] = frozenset({"Rank"})

    def check(self, rpc: str, metadata: Iterable[tuple[str, str | bytes]]) -> None:
        """Raise ``Unauthenticated`` unless ``rpc`` is open or the metadata carries the token."""
        if rpc in self.open_rpcs:
            return
        presented = _bearer(metadata)
        if self.token is None or presented is None or not hmac.compare_digest(
            presented.encode("utf-8"), self.token.encode("utf-8")
        ):
            raise Unauthenticated(
                f"{rpc} needs a valid credential: send metadata 'authorization: Bearer <token>'"
            )

    def describe(self) -> str:
        """For logs and Status: never the token, only whether one is set and its digest prefix."""
        if self.token is None:
            return "no ingress token configured: only " + ", ".join(sorted(self.open_rpcs)) + " callable"
        digest = hashlib.sha256(self.token.encode("utf-8")).hexdigest()[:8]
        return f"ingress token sha256:{digest}...; open rpcs: {', '.join(sorted(self.open_rpcs))}"


def _bearer(metadata: Iterable[tuple[str, str | bytes]]) -> str | None:
    for key, value in metadata:
        if key.lower() != "authorization":
            continue
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        if text.lower().startswith(_BEARER):
            return text[len(_BEARER):].strip()
    return None
