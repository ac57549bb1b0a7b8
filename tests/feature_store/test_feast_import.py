"""Feast is imported without typeguard's import-time instrumentation (``feature_store.feast_import``):
Feast's decorated functions come back unchanged, every other library's are still checked."""

from __future__ import annotations

import types

import pytest
import typeguard

from feature_store.feast_import import skip_feast_type_checks


def _function_of(module: str) -> types.FunctionType:
    namespace: dict[str, object] = {"__name__": module}
    exec("def describe(count: int) -> str:\n    return str(count)\n", namespace)  # noqa: S102
    return namespace["describe"]  # type: ignore[return-value]


def describe_here(count: int) -> str:
    """A function of this module (typeguard re-reads its source to instrument it)."""
    return str(count)


def test_a_function_of_feast_is_returned_unchanged_and_unchecked() -> None:
    assert skip_feast_type_checks()
    describe = _function_of("feast.feature_view")
    assert typeguard.typechecked(describe) is describe
    assert describe("not a count") == "not a count"  # type: ignore[arg-type]


def test_a_function_of_any_other_module_is_still_type_checked() -> None:
    skip_feast_type_checks()
    checked = typeguard.typechecked(describe_here)
    assert checked(3) == "3"
    with pytest.raises(typeguard.TypeCheckError):
        checked("not a count")  # type: ignore[arg-type]


def test_the_decorator_with_options_is_still_typeguards_for_other_modules() -> None:
    skip_feast_type_checks()
    decorate = typeguard.typechecked(collection_check_strategy=typeguard.CollectionCheckStrategy.ALL_ITEMS)
    describe = _function_of("feast.entity")
    assert decorate(describe) is describe
    with pytest.raises(typeguard.TypeCheckError):
        decorate(describe_here)("x")  # type: ignore[arg-type]


def test_feast_as_this_process_imported_it_skips_its_runtime_checks() -> None:
    """tests/conftest.py imports feature_store before anything imports Feast, as serving does."""
    import feast

    entity = feast.Entity(name="user", join_keys=["user_id"], description=5)  # type: ignore[arg-type]
    assert entity.description == 5


def test_installing_twice_wraps_once() -> None:
    skip_feast_type_checks()
    first = typeguard.typechecked
    skip_feast_type_checks()
    assert typeguard.typechecked is first
