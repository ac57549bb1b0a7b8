"""Type stub for the compiled FTRL-Proximal kernel (``online_layer/_ftrl.pyx``)."""

import numpy as np
import numpy.typing as npt

KERNEL_VERSION: int

def kernel_version() -> int: ...

class FTRLKernel:
    """Pointers into one model's state (z, n, w, prec) plus scratch space; see the .pyx."""

    n_dense: int
    table_size: int
    alpha: float
    beta: float
    l1: float
    l2: float

    def __init__(
        self,
        z: npt.NDArray[np.float64],
        n: npt.NDArray[np.float64],
        w: npt.NDArray[np.float64],
        prec: npt.NDArray[np.float64],
        n_dense: int,
        alpha: float,
        beta: float,
        l1: float,
        l2: float,
    ) -> None: ...
    def recompute_weights(self) -> None: ...
    def predict(
        self,
        base: npt.NDArray[np.float64],
        dense: npt.NDArray[np.float64],
        sparse: npt.NDArray[np.int64],
        out: npt.NDArray[np.float64],
    ) -> None: ...
    def learn(
        self,
        base: npt.NDArray[np.float64],
        dense: npt.NDArray[np.float64],
        sparse: npt.NDArray[np.int64],
        labels: npt.NDArray[np.float64],
    ) -> None: ...

def add_gathered(
    out: npt.NDArray[np.float64],
    eps: npt.NDArray[np.float32],
    inv: npt.NDArray[np.int64],
) -> None: ...

def distinct_sorted(
    ordered: npt.NDArray[np.int64], cells: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]: ...

def slot_probabilities(
    scores: npt.NDArray[np.float64],
    desc: npt.NDArray[np.float64],
    rest: npt.NDArray[np.float64],
    base: npt.NDArray[np.float64],
    own_sd: npt.NDArray[np.float64],
    exact: npt.NDArray[np.uint8],
    served: npt.NDArray[np.int64],
    cap: float,
    out: npt.NDArray[np.float64],
) -> None: ...
