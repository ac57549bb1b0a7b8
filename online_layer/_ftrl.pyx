# cython: language_level=3
"""FTRL-Proximal kernels (McMahan et al. 2013, Algorithm 1), one example at a time.

The state (``z``, ``n`` and the cached weights ``w``) lives in NumPy arrays owned by the
Python class ``online_layer.ftrl.FTRLProximal``; ``FTRLKernel`` keeps raw pointers into them
plus scratch space, so a call converts only its inputs. Every loop runs in ``with nogil:``
over typed memoryviews and touches no Python object per example.

Coordinates: ``[0, n_dense)`` are the dense columns, ``n_dense + h`` is hashed index ``h``
(a hashed index repeated within one row is one coordinate with value = its count).
``learn`` runs the per-example algorithm over the rows in order, so a mini-batch gives
exactly the weights that learning its rows one by one gives. It validates every row first
and returns an error code before changing anything, so the Python wrapper can raise with
the state intact.

Beside the FTRL state the kernel keeps ``prec``, the data part of a diagonal Gaussian
(Laplace) posterior's precision over the weights (Chapelle & Li 2011, "An Empirical
Evaluation of Thompson Sampling", Algorithm 3): each example adds ``p (1 - p) x_i^2`` to
every coordinate it touches, ``p`` the click probability it was scored with before its
step. The posterior's mean is the FTRL weight and its precision ``prior + prec`` (the prior
is the Python wrapper's); the FTRL arithmetic is unchanged by it.
"""

import numpy as np

from libc.math cimport INFINITY, M_SQRT1_2, erfc, exp, fabs, isfinite, sqrt
from libc.stdint cimport int64_t, uint8_t


cdef enum:
    # Error codes of the nogil passes.
    OK = 0
    BAD_INDEX = 1
    BAD_VALUE = 2
    BAD_LABEL = 3

KERNEL_VERSION = 2


def kernel_version() -> int:
    """Version of the kernel's arithmetic; bumped whenever results could change."""
    return KERNEL_VERSION


cdef inline double _weight(double z, double q, double inv_alpha, double beta, double l1,
                           double l2) noexcept nogil:
    """The closed-form FTRL-Proximal weight of one coordinate (``q = sqrt(n)``)."""
    if fabs(z) <= l1:
        return 0.0
    if z > 0.0:
        return -(z - l1) / ((beta + q) * inv_alpha + l2)
    return -(z + l1) / ((beta + q) * inv_alpha + l2)


cdef inline void _step(double* z, double* n, double* q, double* w, int64_t c, double g,
                       double inv_alpha, double beta, double l1, double l2) noexcept nogil:
    """One FTRL-Proximal update of coordinate ``c`` with gradient ``g`` (``q = sqrt(n)``)."""
    cdef double n_new, q_new, zc
    if g == 0.0:
        return
    n_new = n[c] + g * g
    q_new = sqrt(n_new)
    zc = z[c] + g - (q_new - q[c]) * inv_alpha * w[c]
    z[c] = zc
    n[c] = n_new
    q[c] = q_new
    w[c] = _weight(zc, q_new, inv_alpha, beta, l1, l2)


cdef inline double _sigmoid(double s) noexcept nogil:
    cdef double e
    if s >= 0.0:
        return 1.0 / (1.0 + exp(-s))
    e = exp(s)
    return e / (1.0 + e)


cdef inline double _logit(const double* w, double base, const double* row, Py_ssize_t n_dense,
                          const int64_t* idx, Py_ssize_t n_sparse) noexcept nogil:
    """``base + w[:n_dense] . row + sum_k w[n_dense + idx[k]]`` (four partial sums)."""
    cdef double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0
    cdef Py_ssize_t j = 0, k
    while j + 4 <= n_dense:
        s0 += w[j] * row[j]
        s1 += w[j + 1] * row[j + 1]
        s2 += w[j + 2] * row[j + 2]
        s3 += w[j + 3] * row[j + 3]
        j += 4
    while j < n_dense:
        s0 += w[j] * row[j]
        j += 1
    for k in range(n_sparse):
        s1 += w[n_dense + idx[k]]
    return base + ((s0 + s1) + (s2 + s3))


cdef int _check_rows(const double[::1] base, const double[:, ::1] dense,
                     const int64_t[:, ::1] sparse, int64_t table_size) noexcept nogil:
    cdef Py_ssize_t i, j, k
    for i in range(base.shape[0]):
        if not isfinite(base[i]):
            return BAD_VALUE
        for j in range(dense.shape[1]):
            if not isfinite(dense[i, j]):
                return BAD_VALUE
        for k in range(sparse.shape[1]):
            if sparse[i, k] < 0 or sparse[i, k] >= table_size:
                return BAD_INDEX
    return OK


cdef class FTRLKernel:
    """Pointers into one model's state plus the scratch space a learning step needs.

    Parameters
    ----------
    z, n, w, prec : float64 arrays of shape (n_dense + 2**hash_bits,)
        FTRL accumulators, the cached weights and the posterior's data precision; updated in
        place. The kernel keeps them alive and must be rebuilt if they are replaced.
    n_dense : int
        Number of dense coordinates at the front of the state.
    alpha, beta, l1, l2 : float
        FTRL-Proximal hyper-parameters (validated by the Python wrapper).
    """

    cdef object _arrays
    cdef double* z
    cdef double* n
    cdef double* w
    cdef double* q
    cdef double* prec
    cdef double[::1] sqrt_n
    cdef double[::1] count
    cdef double[::1] grad
    cdef uint8_t[::1] seen
    cdef int64_t[::1] touched
    cdef readonly Py_ssize_t n_dense
    cdef readonly int64_t table_size
    cdef readonly double alpha, beta, l1, l2

    def __init__(self, double[::1] z, double[::1] n, double[::1] w, double[::1] prec,
                 Py_ssize_t n_dense, double alpha, double beta, double l1, double l2):
        cdef Py_ssize_t size = z.shape[0]
        if n.shape[0] != size or w.shape[0] != size or prec.shape[0] != size:
            raise ValueError("z, n, w and prec must have the same length")
        if n_dense < 0 or n_dense >= size:
            raise ValueError(f"n_dense={n_dense} does not fit a state of {size} coordinates")
        self._arrays = (z, n, w, prec)
        self.prec = &prec[0]
        self.z = &z[0]
        self.n = &n[0]
        self.w = &w[0]
        self.n_dense = n_dense
        self.table_size = size - n_dense
        self.alpha = alpha
        self.beta = beta
        self.l1 = l1
        self.l2 = l2
        self.sqrt_n = np.sqrt(n)
        self.q = &self.sqrt_n[0]
        self.grad = np.zeros(size, dtype=np.float64)
        self.count = np.zeros(size, dtype=np.float64)
        self.seen = np.zeros(size, dtype=np.uint8)
        self.touched = np.zeros(64, dtype=np.int64)

    def recompute_weights(self) -> None:
        """Set every cached weight from ``z`` and ``n`` (after a restore)."""
        cdef Py_ssize_t c
        cdef Py_ssize_t size = self.n_dense + self.table_size
        cdef double inv_alpha = 1.0 / self.alpha
        with nogil:
            for c in range(size):
                self.q[c] = sqrt(self.n[c])
                self.w[c] = _weight(self.z[c], self.q[c], inv_alpha, self.beta, self.l1,
                                    self.l2)

    def predict(self, const double[::1] base, const double[:, ::1] dense,
                const int64_t[:, ::1] sparse, double[::1] out) -> None:
        """Write the logit of every row into ``out``; changes no state.

        Raises
        ------
        ValueError
            A hashed index outside ``[0, 2**hash_bits)``, or mismatched shapes.
        """
        cdef Py_ssize_t i, k
        cdef Py_ssize_t n_rows = base.shape[0]
        cdef Py_ssize_t n_sparse = sparse.shape[1]
        cdef Py_ssize_t n_dense = self.n_dense
        cdef int code = OK
        if dense.shape[0] != n_rows or sparse.shape[0] != n_rows or out.shape[0] != n_rows:
            raise ValueError("base, dense, sparse and out must have the same number of rows")
        if dense.shape[1] != n_dense:
            raise ValueError(f"dense has {dense.shape[1]} columns; the model has {n_dense}")
        if n_rows == 0:
            return
        with nogil:
            for i in range(n_rows):
                for k in range(n_sparse):
                    if sparse[i, k] < 0 or sparse[i, k] >= self.table_size:
                        code = BAD_INDEX
                if code != OK:
                    break
                out[i] = _logit(self.w, base[i], &dense[i, 0], n_dense, &sparse[i, 0],
                                n_sparse)
        if code != OK:
            raise ValueError(f"a hashed index is outside [0, {self.table_size})")

    def learn(self, const double[::1] base, const double[:, ::1] dense,
              const int64_t[:, ::1] sparse, const double[::1] labels) -> None:
        """Learn the rows in order, one FTRL-Proximal step per row.

        Raises
        ------
        ValueError
            Mismatched shapes, a hashed index out of range, a non-finite input, or a label
            outside [0, 1]; nothing is changed then.
        """
        cdef Py_ssize_t n_rows = base.shape[0]
        cdef Py_ssize_t n_sparse = sparse.shape[1]
        cdef Py_ssize_t n_dense = self.n_dense
        cdef Py_ssize_t i, j, k, t, n_touched
        cdef int64_t c
        cdef double r, y, p, h
        cdef int code = OK
        cdef double inv_alpha = 1.0 / self.alpha
        cdef double beta = self.beta, l1 = self.l1, l2 = self.l2
        cdef double* z = self.z
        cdef double* q = self.q
        cdef double* nn = self.n
        cdef double* w = self.w
        cdef double* prec = self.prec
        cdef const double* row
        cdef const int64_t* idx
        if dense.shape[0] != n_rows or sparse.shape[0] != n_rows or labels.shape[0] != n_rows:
            raise ValueError("base, dense, sparse and labels must have the same number of rows")
        if dense.shape[1] != n_dense:
            raise ValueError(f"dense has {dense.shape[1]} columns; the model has {n_dense}")
        if n_rows == 0:
            return
        if self.touched.shape[0] < n_sparse:
            self.touched = np.zeros(n_sparse, dtype=np.int64)
        cdef double* grad = &self.grad[0]
        cdef double* count = &self.count[0]
        cdef uint8_t* seen = &self.seen[0]
        cdef int64_t* touched = &self.touched[0]
        with nogil:
            code = _check_rows(base, dense, sparse, self.table_size)
            if code == OK:
                for i in range(n_rows):
                    y = labels[i]
                    if not (y >= 0.0 and y <= 1.0):
                        code = BAD_LABEL
                        break
            if code == OK:
                for i in range(n_rows):
                    row = &dense[i, 0]
                    idx = &sparse[i, 0]
                    p = _sigmoid(_logit(w, base[i], row, n_dense, idx, n_sparse))
                    r = p - labels[i]
                    h = p * (1.0 - p)
                    for j in range(n_dense):
                        prec[j] += h * row[j] * row[j]
                        _step(z, nn, q, w, j, r * row[j], inv_alpha, beta, l1, l2)
                    # A hashed coordinate repeated in the row gets one step with its count.
                    n_touched = 0
                    for k in range(n_sparse):
                        c = n_dense + idx[k]
                        if seen[c] == 0:
                            seen[c] = 1
                            touched[n_touched] = c
                            n_touched += 1
                        grad[c] += r
                        count[c] += 1.0
                    for t in range(n_touched):
                        c = touched[t]
                        prec[c] += h * count[c] * count[c]
                        _step(z, nn, q, w, c, grad[c], inv_alpha, beta, l1, l2)
                        grad[c] = 0.0
                        count[c] = 0.0
                        seen[c] = 0
        if code == BAD_INDEX:
            raise ValueError(f"a hashed index is outside [0, {self.table_size})")
        if code == BAD_LABEL:
            raise ValueError("a label is NaN or outside [0, 1]")
        if code == BAD_VALUE:
            raise ValueError("an input is not finite (NaN or inf in base_logit or dense)")


def add_gathered(double[:, ::1] out, const float[:, ::1] eps, const int64_t[:, ::1] inv):
    """``out[s, i] += sum_c eps[s, inv[i, c]]`` in place: the hashed part of a posterior draw.

    ``eps`` holds one float32 draw per distinct coordinate (columns) and sample (rows);
    ``inv`` maps every row's hashed slots to those columns. The per-row sum runs in float32,
    left to right as NumPy's ``eps[:, inv].sum(axis=2)`` adds fewer than 8 terms, so the two
    give the same bits there.
    """
    cdef Py_ssize_t n_samples = out.shape[0], n_rows = out.shape[1], n_slots = inv.shape[1]
    cdef Py_ssize_t n_coords = eps.shape[1], s, i, c
    cdef float acc
    if eps.shape[0] != n_samples or inv.shape[0] != n_rows:
        raise ValueError(f"shapes disagree: out {out.shape[0]}x{n_rows}, eps {eps.shape[0]}x{n_coords}, "
                         f"inv {inv.shape[0]}x{n_slots}")
    cdef int bad = 0
    with nogil:
        for i in range(n_rows):
            for c in range(n_slots):
                if inv[i, c] < 0 or inv[i, c] >= n_coords:
                    bad = 1
        if not bad and n_slots > 0:
            for s in range(n_samples):
                for i in range(n_rows):
                    acc = eps[s, inv[i, 0]]
                    for c in range(1, n_slots):
                        acc = acc + eps[s, inv[i, c]]
                    out[s, i] += <double>acc
    if bad:
        raise ValueError(f"an index of inv is outside [0, {n_coords})")


def distinct_sorted(const int64_t[::1] ordered, const int64_t[::1] cells):
    """``np.unique(cells, return_inverse=True)`` given ``ordered = np.sort(cells)``: the
    distinct values (ascending) and each cell's position among them, by one pass and a
    binary search per cell (NumPy's ``unique`` pays Python-level steps and an argsort)."""
    cdef Py_ssize_t n = ordered.shape[0], i, lo, hi, mid, m = 0
    if cells.shape[0] != n:
        raise ValueError(f"ordered has {n} values, cells {cells.shape[0]}")
    uniq_arr = np.empty(n, dtype=np.int64)
    inv_arr = np.empty(n, dtype=np.int64)
    cdef int64_t[::1] uniq = uniq_arr
    cdef int64_t[::1] inv = inv_arr
    cdef int64_t v
    with nogil:
        for i in range(n):
            if m == 0 or ordered[i] != uniq[m - 1]:
                uniq[m] = ordered[i]
                m += 1
        for i in range(n):  # branch-free binary search (every cell's value is in uniq)
            v = cells[i]
            lo = 0
            hi = m  # the length of the range still searched
            while hi > 1:
                mid = hi >> 1
                lo = lo + mid if uniq[lo + mid] <= v else lo
                hi -= mid
            inv[i] = lo
    return uniq_arr[:m], inv_arr


cdef inline double _above(double z) noexcept nogil:
    """P(Z > z) for a standard normal Z (accurate far into the upper tail)."""
    return 0.5 * erfc(z * M_SQRT1_2)


cdef inline double _between(double lo, double hi) noexcept nogil:
    """P(lo < Z < hi), each tail from its own complementary function (no cancellation); a
    narrow interval (width w < 0.05, |midpoint m| < 6) by the midpoint rule with its
    second-order term, phi(m) w (1 + (m^2 - 1) w^2 / 24): the next term is w^4 (m^4 - 6 m^2
    + 3) / 1920, a relative error below 1e-5 there, for one exp instead of two erfc."""
    cdef double w = hi - lo, m
    if lo >= hi:
        return 0.0
    if w < 0.05:
        m = 0.5 * (lo + hi)
        if fabs(m) < 6.0:
            return 0.3989422804014327 * exp(-0.5 * m * m) * w * (1.0 + (m * m - 1.0) * w * w / 24.0)
    if lo > 0.0:
        return _above(lo) - _above(hi)
    if hi < 0.0:
        return _above(-hi) - _above(-lo)
    return 1.0 - _above(hi) - _above(-lo)


cdef inline double _landing(double lower, double upper, double rest, double base, double cap,
                            double sd) noexcept nogil:
    """P(lower < base + clip(rest - base + sd Z, -cap, cap) < upper): the probability that a
    score whose own-weight term is ``sd Z`` falls strictly between two neighbours."""
    cdef double a = lower - base, b = upper - base, r = rest - base, lo, hi
    if a >= cap or b <= -cap:
        return 0.0
    lo = -INFINITY if a < -cap else (a - r) / sd
    hi = INFINITY if b > cap else (b - r) / sd
    return _between(lo, hi)


def slot_probabilities(const double[:, ::1] scores, const double[:, ::1] desc, const double[:, ::1] rest,
                       const double[::1] base, const double[::1] own_sd, const uint8_t[::1] exact,
                       const int64_t[::1] served, double cap, double[::1] out):
    """Rao-Blackwellised slot probabilities (``serving.exploration`` states the estimator).

    ``scores`` (draws x pool): each draw's (clipped) score of every pool row; ``desc``: each
    draw's ``m`` largest scores, descending, ``m >= min(len(served) + 1, pool)``; ``rest``:
    the unclipped score less the row's own-weight term; ``base``: the row's base logit (the
    clip's centre); ``own_sd``: the own term's standard deviation; ``cap``: the clip's half
    width (inf: none). ``out[j]``: for ``i = served[j]``, the mean over draws of
    P(i lands at position j | the draw's other scores) where ``exact[i]``, else the share of
    draws (the served one counted, ``(1 + hits) / (1 + draws)``) that put it there. A row may
    appear at several positions (its whole row of slot probabilities).
    """
    cdef Py_ssize_t n_draws = scores.shape[0], pool = scores.shape[1], m = desc.shape[1]
    cdef Py_ssize_t k = served.shape[0], d, j, t
    cdef int64_t i
    cdef double v, upper, lower, acc
    if (rest.shape[0] != n_draws or rest.shape[1] != pool or desc.shape[0] != n_draws
            or base.shape[0] != pool or own_sd.shape[0] != pool or exact.shape[0] != pool
            or out.shape[0] != k or m > pool or m < min(k + 1, pool) or n_draws < 1):
        raise ValueError(f"shapes disagree: scores {n_draws}x{pool}, desc {desc.shape[0]}x{m}, "
                         f"rest {rest.shape[0]}x{rest.shape[1]}, served {k}, out {out.shape[0]}")
    cdef int bad = 0
    with nogil:
        for j in range(k):
            if served[j] < 0 or served[j] >= pool or (exact[served[j]] and not own_sd[served[j]] > 0.0):
                bad = 1
        if not bad:
            for j in range(k):
                i = served[j]
                acc = 0.0
                for d in range(n_draws):
                    v = scores[d, i]
                    # The others' j-th and (j+1)-th largest: the draw's order less one copy of v.
                    if j == 0:
                        upper = INFINITY
                    else:
                        upper = desc[d, j - 1] if desc[d, j - 1] > v else desc[d, j]
                    t = j if desc[d, j] > v else j + 1
                    lower = desc[d, t] if t < m else -INFINITY
                    if exact[i]:
                        acc += _landing(lower, upper, rest[d, i], base[i], cap, own_sd[i])
                    elif upper > v and v > lower:
                        acc += 1.0
                out[j] = acc / n_draws if exact[i] else (1.0 + acc) / (1.0 + n_draws)
    if bad:
        raise ValueError(f"a served index is outside [0, {pool}) or an exact row has no positive own_sd")
