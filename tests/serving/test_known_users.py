"""The guard's established users grow with every base that serves, and never shrink."""

from __future__ import annotations

import threading

from serving.known_users import KnownUsers


def test_users_of_a_promoted_base_become_established_and_the_old_ones_stay() -> None:
    first, promoted = {"u1", "u2"}, {"u2", "u3"}
    known = KnownUsers(first)
    assert [known(u) for u in ("u1", "u3", "made-up")] == [True, False, False]
    known.add(promoted)
    assert [known(u) for u in ("u1", "u2", "u3", "made-up")] == [True, True, True, False]


def test_adding_the_same_vocabulary_twice_keeps_one_copy() -> None:
    users = {"u1"}
    known = KnownUsers(users)
    known.add(users)
    assert len(known.vocabularies) == 1


def test_lookups_during_an_add_see_the_old_or_the_new_set_never_an_error() -> None:
    known = KnownUsers({"u0"})
    errors: list[BaseException] = []

    def look() -> None:
        try:
            for _ in range(20_000):
                assert known("u0")
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    reader = threading.Thread(target=look)
    reader.start()
    for i in range(200):
        known.add({f"v{i}"})
    reader.join(timeout=30)
    assert errors == [] and known("v199")
