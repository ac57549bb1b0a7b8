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
import ipaddress
import os
import secrets
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from protos.errors import FailedPrecondition, PermissionDenied, Unauthenticated

__all__ = [
    "TOKEN_ENV", "AccessPolicy", "PeerPolicy", "Secret", "is_loopback_host", "load_token",
    "session_token",
]

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


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (a configured listen address) is a loopback address or name."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def _peer_address(peer: str) -> str | None:
    """The IP address in a gRPC peer string ("ipv4:1.2.3.4:5", "ipv6:[::1]:5"), else None."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    if kind == "ipv6":
        return rest.rsplit(":", 1)[0].strip("[]").split("%")[0]
    return None


@dataclass(frozen=True)
class PeerPolicy:
    """Refuse callers from other hosts while the server is configured for loopback.

    Why here: Ray Serve 2.60's gRPC proxy binds ``[::]:port`` (all interfaces; hard-coded
    in ``ray.serve._private.grpc_util.start_grpc_server``, no option or environment
    variable changes it), so ``serving.host = "127.0.0.1"`` cannot keep the socket itself
    on loopback. The proxy forwards the caller's address (``grpc_context.peer()``) to the
    ingress, which answers every freshrank rpc from a non-loopback peer with
    ``PERMISSION_DENIED`` before reading the request. Serve's own services on that port
    (``RayServeAPIService/Healthz``, ``ListApplications``, reflection) still answer: close
    the port with a firewall / NetworkPolicy when that matters.

    >>> PeerPolicy(loopback_only=True).check("Rank", "ipv4:127.0.0.1:5000")
    >>> PeerPolicy(loopback_only=True).check("Rank", "ipv6:[::ffff:127.0.0.1]:5000")
    >>> try:
    ...     PeerPolicy(loopback_only=True).check("Rank", "ipv4:192.0.2.2:5000")
    ... except PermissionDenied as error:
    ...     print(str(error)[:32])
    Rank is served to this host only
    """

    loopback_only: bool
    host: str = "127.0.0.1"

    @classmethod
    def for_host(cls, host: str) -> PeerPolicy:
        return cls(loopback_only=is_loopback_host(host), host=host)

    def check(self, rpc: str, peer: str | None) -> None:
        if not self.loopback_only or peer is None:
            return  # a caller without a peer (a handle call inside the cluster) is local
        if peer.startswith("unix:"):
            return
        address = _peer_address(peer)
        loopback = False
        if address is not None:
            try:
                ip = ipaddress.ip_address(address)
                mapped = getattr(ip, "ipv4_mapped", None)
                loopback = ip.is_loopback or (mapped is not None and mapped.is_loopback)
            except ValueError:
                loopback = False
        if not loopback:
            raise PermissionDenied(
                f"{rpc} is served to this host only (serving.host is {self.host}); "
                "set serving.host to serve other hosts"
            )


class Secret:
    """A token passed between processes (a deployment's init argument) that never prints.

    >>> Secret("s3cret")
    Secret(sha256:1ec1c26b...)
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    @property
    def value(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret(sha256:{hashlib.sha256(self._value.encode('utf-8')).hexdigest()[:8]}...)"

    __str__ = __repr__

    def __reduce__(self) -> tuple[type[Secret], tuple[str]]:
        return (Secret, (self._value,))


@contextmanager
def session_token() -> Iterator[str]:
    """A token for an app this process starts and calls itself (demo, bench, tests).

    Keeps ``$FRESHRANK_INGRESS_TOKEN`` when it is set; otherwise sets a random one for the
    duration (``serving.app.build_app`` hands it to the replicas, ``RankerClient`` sends it)
    and removes it afterwards.
    """
    existing = os.environ.get(TOKEN_ENV, "").strip()
    if existing:
        yield existing
        return
    token = secrets.token_urlsafe(32)
    os.environ[TOKEN_ENV] = token
    try:
        yield token
    finally:
        if os.environ.get(TOKEN_ENV) == token:
            del os.environ[TOKEN_ENV]
