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
