"""Feast without typeguard's import-time instrumentation: ~9 s of CPU less per process.

Feast 0.67 decorates 23 of its functions and classes with typeguard's ``@typechecked``, which
recompiles each decorated function (every method of a decorated class: 242 of them) from
its module's re-parsed source while Feast is being imported. Measured here (2 cores,
``python -c "import feast"``): 13.9-14.6 s as shipped, 5.0-5.9 s with Feast's decorators made
the identity (of which ~3.5 s is torch, which Feast imports). Every process that reads
features pays it: each Ranker and Learner replica at start, each Ray worker and each CLI
command; on two cores those seconds are taken from serving and learning
(typeguard issue #468; featurebyte patches Feast's ``typechecked`` the same way, and saw
``get_online_features`` faster too).

Those checks are a development aid (typeguard itself turns them off under ``python -O``):
they raise ``TypeCheckError`` when Feast's API is called with wrong argument types. Ours are
checked statically (mypy runs beside the suite in ``make test``). Only Feast's own modules are affected;
any other library's ``@typechecked`` is left as it is.
"""

from __future__ import annotations

import functools
from typing import Any

_MARK = "_freshrank_skips_feast"


def _defined_in_feast(target: Any) -> bool:
    module = getattr(target, "__module__", None) or getattr(
        getattr(target, "__func__", None), "__module__", ""
    )
    return module == "feast" or str(module).startswith("feast.")


def skip_feast_type_checks() -> bool:
    """Make typeguard's ``typechecked`` return Feast's functions and classes unchanged.

    Must run before Feast is first imported in the process (``import feature_store`` does
    it); afterwards it changes nothing for Feast. Idempotent. Returns False when typeguard is
    not installed (then Feast cannot use it either)."""
    try:
        import typeguard
    except ImportError:
        return False
    original = typeguard.typechecked
    if getattr(original, _MARK, False):
        return True

    def typechecked(target: Any = None, **options: Any) -> Any:
        if target is None:
            return functools.partial(typechecked, **options)
        if _defined_in_feast(target):
            return target
        return original(target, **options)

    setattr(typechecked, _MARK, True)
    typeguard.typechecked = typechecked  # type: ignore[assignment]
    return True
