"""The one table of online-model implementations, and the constructors that read it.

``model.py`` states the contract, ``ftrl.py`` (Cython) and ``reference.py`` (NumPy) keep
it; this module is the only one that knows both, so the contract never imports its
subclasses. The learner builds its model here, serving loads snapshots here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from online_layer.errors import InputError
from online_layer.ftrl import FTRLProximal
from online_layer.model import OnlineModel
from online_layer.reference import FTRLReference

IMPLEMENTATIONS: dict[str, type[OnlineModel]] = {
    FTRLProximal.implementation: FTRLProximal,
    FTRLReference.implementation: FTRLReference,
}


def model_class(implementation: str) -> type[OnlineModel]:
    """The class named ``implementation`` (``"cython"`` or ``"numpy"``).

    Raises
    ------
    InputError
        Any other name.

    Examples
    --------
    >>> model_class("numpy").__name__
    'FTRLReference'
    """
    cls = IMPLEMENTATIONS.get(implementation)
    if cls is None:
        names = " or ".join(repr(name) for name in IMPLEMENTATIONS)
        raise InputError(f"implementation must be {names}, got {implementation!r}")
    return cls


def new_model(
    implementation: str,
    n_dense: int,
    hash_bits: int,
    base_version: str,
    params: Mapping[str, float] | None = None,
) -> OnlineModel:
    """A model with zero weights (it scores exactly the base) of the named implementation.

    ``params`` are the FTRL hyper-parameters (``OnlineLayerConfig.ftrl_params()``).
    """
    return model_class(implementation)(n_dense, hash_bits, base_version, **dict(params or {}))


def load_snapshot(
    blob: bytes,
    expected_base_version: str,
    expected_layout: Mapping[str, Any] | None = None,
    implementation: str = "cython",
) -> OnlineModel:
    """A model restored from a snapshot, for serving: the Cython ``FTRLProximal`` by default.

    Raises
    ------
    BaseVersionMismatch
        The snapshot corrects another base than ``expected_base_version``.
    SnapshotError
        Corrupt, or (when given) built on another feature layout than ``expected_layout``.
    InputError
        An unknown ``implementation``.
    """
    return model_class(implementation).from_snapshot(blob, expected_base_version, expected_layout)
