"""The ingress credential: Feedback and admin rpcs need the token; Rank may stay open."""

from __future__ import annotations

from pathlib import Path

import pytest

from protos.errors import FailedPrecondition, Unauthenticated
from serving.auth import TOKEN_ENV, AccessPolicy, load_token

POLICY = AccessPolicy(token="tok-123", open_rpcs=frozenset({"Rank"}))


@pytest.mark.parametrize(
    "metadata",
    [(), (("authorization", "Bearer nope"),), (("authorization", "tok-123"),),
     (("x-token", "Bearer tok-123"),), (("authorization", "Bearer tok-1234"),)],
)
def test_feedback_without_the_right_bearer_token_is_unauthenticated(metadata) -> None:
    with pytest.raises(Unauthenticated, match="Feedback needs a valid credential"):
        POLICY.check("Feedback", metadata)


def test_the_right_token_passes_whatever_the_case_of_the_key_and_scheme() -> None:
    POLICY.check("Feedback", (("Authorization", "bearer tok-123"),))
    POLICY.check("SetOnline", (("authorization", b"Bearer tok-123"),))


def test_rank_is_open_and_everything_is_closed_without_a_token() -> None:
    POLICY.check("Rank", ())
    closed = AccessPolicy(token=None)
    with pytest.raises(Unauthenticated):
        closed.check("Feedback", (("authorization", "Bearer "),))
    assert "no ingress token" in closed.describe()


def test_the_token_is_never_in_the_description() -> None:
    assert "tok-123" not in POLICY.describe()
    assert "sha256:" in POLICY.describe()


def test_the_token_comes_from_the_environment_before_the_file(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("from-file\n")
    assert load_token(str(secret), environ={TOKEN_ENV: "from-env"}) == "from-env"
    assert load_token(str(secret), environ={}) == "from-file"
    assert load_token("", environ={}) is None


def test_an_unreadable_or_empty_token_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition, match="cannot be read"):
        load_token(str(tmp_path / "missing"), environ={})
    empty = tmp_path / "empty"
    empty.write_text("")
    with pytest.raises(FailedPrecondition):
        load_token(str(empty), environ={})


# ------------------------------------------------------------------- peers, secrets


@pytest.mark.parametrize(
    "peer, allowed",
    [
        ("ipv4:127.0.0.1:5000", True),
        ("ipv4:127.8.9.10:5000", True),
        ("ipv6:[::1]:5000", True),
        ("ipv6:[::ffff:127.0.0.1]:5000", True),
        ("unix:/tmp/sock", True),
        ("ipv4:192.0.2.2:5000", False),
        ("ipv6:[2001:db8::1]:5000", False),
        ("ipv6:[::ffff:192.0.2.2]:5000", False),
        ("garbage", False),
    ],
)
def test_a_loopback_server_refuses_peers_from_other_hosts(peer: str, allowed: bool) -> None:
    from protos.errors import PermissionDenied
    from serving.auth import PeerPolicy

    policy = PeerPolicy.for_host("127.0.0.1")
    if allowed:
        policy.check("Rank", peer)
    else:
        with pytest.raises(PermissionDenied, match="Rank is served to this host only"):
            policy.check("Rank", peer)
    PeerPolicy.for_host("0.0.0.0").check("Rank", peer)  # serving other hosts: anyone


def test_which_hosts_are_loopback() -> None:
    from serving.auth import is_loopback_host

    assert all(map(is_loopback_host, ["127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"]))
    assert not any(map(is_loopback_host, ["0.0.0.0", "::", "192.0.2.2", "example.org"]))


def test_a_secret_never_prints_and_survives_pickling() -> None:
    import pickle

    from serving.auth import Secret

    secret = Secret("tok-123")
    assert "tok-123" not in repr(secret) and "tok-123" not in str(secret)
    assert "tok-123" not in f"{[secret]}"
    assert pickle.loads(pickle.dumps(secret)).value == "tok-123"


def test_a_session_token_is_set_for_the_block_and_an_existing_one_is_kept(monkeypatch) -> None:
    import os

    from serving.auth import session_token

    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with session_token() as token:
        assert len(token) >= 32 and os.environ[TOKEN_ENV] == token
    assert TOKEN_ENV not in os.environ
    monkeypatch.setenv(TOKEN_ENV, "mine")
    with session_token() as token:
        assert token == "mine"
    assert os.environ[TOKEN_ENV] == "mine"


def test_the_client_sends_the_token_from_the_argument_or_the_environment(monkeypatch) -> None:
    from serving.client import RankerClient

    monkeypatch.setenv(TOKEN_ENV, "from-env")
    with RankerClient("127.0.0.1:1") as client:
        assert ("authorization", "Bearer from-env") in client._metadata
    with RankerClient("127.0.0.1:1", token="given") as client:
        assert ("authorization", "Bearer given") in client._metadata
    with RankerClient("127.0.0.1:1", token="") as client:
        assert all(key != "authorization" for key, _ in client._metadata)


def test_the_serving_settings_check_the_new_limits() -> None:
    from serving.config import ServingConfig

    assert ServingConfig().open_rpcs == ("Rank", "Status")
    assert ServingConfig.from_dict({"open_rpcs": ["Rank"]}).open_rpcs == ("Rank",)
    for bad in ({"max_id_bytes": 0}, {"max_clock_skew_seconds": -1}, {"max_event_age_seconds": float("nan")}):
        with pytest.raises(ValueError):
            ServingConfig.from_dict(bad)
