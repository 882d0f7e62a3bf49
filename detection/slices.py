"""Slice discovery with statistics: which attribute combinations (discretised) make an outcome deviate most.

Over a table of targets × attributes with one outcome per target (missed 0 / 1, a body part's relevance share, the
context share), :func:`find_slices`

1. discretises the attributes (:func:`discretise`: numeric columns into quantile bins, booleans to yes / no, rare
   categories pooled into ``other``, missing values as ``n/a``);
2. searches the lattice of attribute combinations up to ``max_level`` predicates with SliceLine (Sagadeeva & Boehm,
   SIGMOD 2021, https://mboehm7.github.io/resources/sigmod2021b_sliceline.pdf; the ``sliceline`` package,
   https://github.com/DataDome/sliceline), once for slices where the outcome is higher than elsewhere and, with
   ``direction='both'``, once where it is lower;
3. gives every slice found a two-sided p-value (Fisher's exact test for a 0 / 1 outcome, Welch's t-test otherwise) and
   a Benjamini–Hochberg q-value (:func:`scipy.stats.false_discovery_control`) over the *whole lattice searched* —
   every slice with enough support counts as a hypothesis, the ones SliceLine did not return get p = 1 — so that
   picking the most extreme slices does not inflate significance;
4. drops the slices a higher-ranked listed one explains (:func:`_redundancy`), and gives every slice it *reports*
   its mean with a bootstrap 95 % BCa interval (:func:`mean_interval`, Efron & Tibshirani 1993, ch. 14.3; the
   algorithm of :func:`scipy.stats.bootstrap`), the rest's mean, and the difference with a percentile-bootstrap
   interval (:func:`difference_interval`). Slices that are pruned get no interval (none is computed for them), and
   each slice's resamples come from its own stream (``SeedSequence(config.seed)``'s child number *rank*), so a
   slice's interval does not depend on which other slices are listed or whether ``prune`` is on.

Speed (20,000 targets × 21 attributes, ``benchmarks/bench_slices.py``): SliceLine's lattice search runs as the
package does it, except that its per-level candidate evaluation (a sparse product of the one-hot table with every
candidate, then a comparison) is replaced by an equivalent dense computation (:class:`_DenseEvalSlicefinder`:
co-occurrence counts ``XᵀX`` and ``Xᵀ diag(e) X`` for 2-predicate candidates, column ANDs beyond); the resampled
means of a 0 / 1 outcome are drawn as Binomial(n, p̂) / n — the same distribution as the mean of n rows resampled
with replacement — and the jackknife of the BCa acceleration uses the closed form of the leave-one-out means.

Plain NumPy / pandas / SciPy and ``sliceline``; no pipeline imports.
"""
from __future__ import annotations

import functools
import itertools
import warnings
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field
from scipy import sparse, special, stats

MISSING = "n/a"


class SliceConfig(BaseModel):
    """How slices are searched and tested."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    max_level: int = Field(default=2, ge=1, le=3)       # predicates per slice
    min_support: int = Field(default=20, ge=2)          # targets a slice must hold
    top_k: int = Field(default=10, ge=1)                # slices SliceLine returns per direction
    alpha: float = Field(default=0.99, gt=0.0, le=1.0)  # SliceLine's weight of the error ratio against the size
    n_bins: int = Field(default=3, ge=2, le=10)         # quantile bins of a numeric attribute
    max_categories: int = Field(default=8, ge=2)        # categories kept per column (the rest pooled as 'other')
    direction: Literal["higher", "lower", "both"] = "higher"
    prune: bool = True                                  # drop slices another one listed above explains
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    n_boot: int = Field(default=2000, ge=100)
    fdr: float = Field(default=0.05, gt=0.0, lt=1.0)    # Benjamini-Hochberg level for `significant`
    seed: int = 0


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def discretise(frame: pd.DataFrame, columns: Sequence[str] | None = None, n_bins: int = 3,
               max_categories: int = 8) -> pd.DataFrame:
    """Each attribute as strings naming its bin: numeric columns (not bool) with more than ``n_bins`` distinct
    values into quantile bins labelled ``'[lo, hi)'`` (the top bin closed), booleans ``'yes'`` / ``'no'``, other
    columns as their values with all but the ``max_categories - 1`` most common pooled into ``'other'``; missing
    values become ``'n/a'``. Returns a frame with the same index and ``columns``. Raises ``KeyError`` naming
    columns that ``frame`` lacks."""
    columns = list(frame.columns if columns is None else columns)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise KeyError(f"attribute column(s) {missing} not in the table; it has {list(frame.columns)}")
    out = {}
    for col in columns:
        values = frame[col]
        isna = values.isna().to_numpy()
        distinct = values.nunique()
        if pd.api.types.is_bool_dtype(values) or (distinct <= 2 and set(values.dropna().unique()) <= {True, False}):
            labels = np.where(values.fillna(False).astype(bool), "yes", "no").astype(object)
        elif pd.api.types.is_numeric_dtype(values) and distinct > n_bins:
            edges = np.unique(np.nanquantile(values.to_numpy(float), np.linspace(0, 1, n_bins + 1)))
            idx = np.clip(np.searchsorted(edges, values.to_numpy(float), side="right") - 1, 0, len(edges) - 2)
            names = np.array([f"[{_fmt(lo)}, {_fmt(hi)}{']' if i == len(edges) - 2 else ')'}"
                              for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:]))], object)
            labels = names[idx]
        else:
            text = values.astype(str)
            counts = text[~isna].value_counts()
            keep = counts.index[:max_categories - 1] if len(counts) > max_categories else counts.index
            labels = np.where(text.isin(keep).to_numpy(), text.to_numpy(object), "other").astype(object)
        labels[isna] = MISSING
        out[col] = labels
    return pd.DataFrame(out, index=frame.index)


def lattice_size(codes: pd.DataFrame, max_level: int, min_support: int) -> int:
    """Number of slices (conjunctions of one value each of 1..``max_level`` distinct columns of ``codes``) holding
    at least ``min_support`` rows: the family of hypotheses a search over this lattice tests."""
    factors = [pd.factorize(codes[c])[0] for c in codes.columns]
    total = 0
    for level in range(1, max_level + 1):
        for combo in itertools.combinations(range(len(factors)), level):
            key = np.zeros(len(codes), np.int64)
            for i in combo:
                key = key * (factors[i].max() + 1) + factors[i]
            total += int((np.bincount(key) >= min_support).sum())
    return total


def _binary(x: np.ndarray) -> bool:
    return bool(((x == 0.0) | (x == 1.0)).all())


RESAMPLE_CHUNK_ELEMENTS = 1 << 18   # resampled values gathered at a time in _resampled_means (2 MiB)


def _resampled_means(x: np.ndarray, n_boot: int, gen: np.random.Generator) -> np.ndarray:
    """[n_boot] means of ``x`` [N] resampled with replacement. A 0 / 1 sample's resampled mean is Binomial(N, p̂) / N
    (drawn as such: O(n_boot)); otherwise rows are drawn as :func:`scipy.stats.bootstrap` draws them (the same
    ``integers(0, N, (batch, N))`` calls in batches of ``4e6 // N`` resamples), so that for the same generator the
    means equal scipy's. The draws are kept as int32 (numpy draws the same values for either integer type below
    2³¹) and averaged :data:`RESAMPLE_CHUNK_ELEMENTS` at a time (each row's mean is the same reduction): ~20 MB at
    the batch's 4e6 draws instead of 64 MB of int64 indices and gathered values."""
    if _binary(x):
        return gen.binomial(x.size, x.mean(), n_boot) / x.size
    batch, rows = max(1, 4_000_000 // x.size), max(1, RESAMPLE_CHUNK_ELEMENTS // x.size)
    dtype = np.int32 if x.size < 2 ** 31 else np.int64
    means = []
    for s in range(0, n_boot, batch):
        drawn = gen.integers(0, x.size, (min(batch, n_boot - s), x.size), dtype=dtype)       # [batch, N]
        means += [x[drawn[r:r + rows]].mean(-1) for r in range(0, len(drawn), rows)]
    return np.concatenate(means)


def mean_interval(values: np.ndarray, confidence: float = 0.95, n_boot: int = 2000,
                  rng: np.random.Generator | int | None = 0) -> tuple[float, float]:
    """Bootstrap BCa interval of the mean of ``values`` [N]: :func:`scipy.stats.bootstrap`'s ``method='BCa'``
    (Efron & Tibshirani, *An Introduction to the Bootstrap*, 1993, ch. 14.3; bias correction from the
    share of resampled means below the sample's, acceleration from the jackknife) computed for the mean directly —
    the leave-one-out means in closed form ``(Σx − x_i) / (N − 1)`` (scipy builds an N × (N − 1) resample matrix)
    and, for a 0 / 1 sample, Binomial resampled means (:func:`_resampled_means`). A constant sample gives ``(v, v)``
    (no variation to resample); an empty one ``(nan, nan)``, as does a degenerate bootstrap distribution (scipy's
    ``DegenerateDataWarning`` case)."""
    values = np.asarray(values, float).reshape(-1)
    if values.size == 0:
        return float("nan"), float("nan")
    if np.ptp(values) == 0:
        return float(values[0]), float(values[0])
    n = values.size
    theta_b = _resampled_means(values, n_boot, np.random.default_rng(rng))
    theta = values.mean()
    z0 = special.ndtri((np.count_nonzero(theta_b < theta) + np.count_nonzero(theta_b <= theta)) / (2 * n_boot))
    loo = (values.sum() - values) / (n - 1)                          # jackknife (leave-one-out) means
    u = (n - 1) * (loo.mean() - loo)
    accel = (np.sum(u ** 3) / n ** 3) / (6 * (np.sum(u ** 2) / n ** 2) ** 1.5)
    z = special.ndtri((1 - confidence) / 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        probs = np.array([special.ndtr(z0 + (z0 + zz) / (1 - accel * (z0 + zz))) for zz in (z, -z)])
    if not np.isfinite(probs).all():
        return float("nan"), float("nan")
    lo, hi = np.quantile(theta_b, probs)
    return float(lo), float(hi)


def difference_interval(inside: np.ndarray, outside: np.ndarray, confidence: float = 0.95, n_boot: int = 2000,
                        rng: np.random.Generator | int | None = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of ``mean(inside) - mean(outside)``, each resampled on its own."""
    inside, outside = np.asarray(inside, float), np.asarray(outside, float)
    if inside.size == 0 or outside.size == 0:
        return float("nan"), float("nan")
    gen = np.random.default_rng(rng)

    def boot_means(x: np.ndarray) -> np.ndarray:
        if np.ptp(x) == 0:
            return np.full(n_boot, x[0])
        return _resampled_means(x, n_boot, gen)

    diff = boot_means(inside) - boot_means(outside)
    tail = (1 - confidence) / 2
    return float(np.quantile(diff, tail)), float(np.quantile(diff, 1 - tail))


def p_value(inside: np.ndarray, outside: np.ndarray) -> float:
    """Two-sided p-value for equal means: Fisher's exact test when both samples are 0 / 1, else Welch's t-test;
    1.0 when either sample is empty or nothing varies."""
    inside, outside = np.asarray(inside, float), np.asarray(outside, float)
    if inside.size == 0 or outside.size == 0:
        return 1.0
    if _binary(inside) and _binary(outside):
        a, b = int(inside.sum()), int(outside.sum())
        return float(stats.fisher_exact([[a, inside.size - a], [b, outside.size - b]]).pvalue)
    if inside.size < 2 or outside.size < 2:
        return 1.0
    if np.ptp(inside) == 0 and np.ptp(outside) == 0:
        return 1.0 if inside[0] == outside[0] else 0.0
    return float(stats.ttest_ind(inside, outside, equal_var=False).pvalue)


GRAM_CHUNK_ELEMENTS = 1 << 20       # float64 elements of one chunk of rows in _row_chunked_grams (8 MiB)


def _dense_eval(finder, x_encoded: sparse.csr_matrix, errors: np.ndarray, slices: sparse.csr_matrix,
                level: int) -> np.ndarray | None:
    """SliceLine's ``_eval_slice`` statistics [M, 4] (score, error sum, max error, size) of the candidate slices
    ``slices`` [M, D] (``level`` one-hot predicates each) over ``x_encoded`` [N, D] and ``errors`` [N] (>= 0),
    computed densely and to the same bits. For 2-predicate slices with integer errors taking at most 16 values
    (a 0 / 1 outcome) sizes, error sums and max errors are entries of ``XᵀX``, ``Xᵀ diag(e) X`` and
    ``Xᵀ diag(e = v) X`` [D, D] (integer sums: exact in float64); otherwise the candidates' columns are ANDed in
    chunks of rows × candidates and summed over rows in row order, as the package's sparse product sums them.
    ``None`` when a candidate has another number of predicates (the caller then uses the package's evaluation)."""
    slices = sparse.csr_matrix(slices, dtype=bool)
    slices.sum_duplicates()
    m = slices.shape[0]
    if m == 0 or (np.diff(slices.indptr) != level).any():
        return None
    preds = slices.indices.reshape(m, level)
    rows = _dense_rows(finder, x_encoded)
    errors = np.asarray(errors, float).reshape(-1)
    values = np.unique(errors[errors > 0])
    if level == 2 and values.size <= 16 and np.array_equal(values, np.round(values)):
        a, b = preds[:, 0], preds[:, 1]
        grams = _row_chunked_grams(rows, [errors, *((errors == v).astype(float) for v in values)])
        sizes, sums = grams[0][a, b], grams[1][a, b]
        top = np.zeros(m)
        for value, gram in zip(values, grams[2:]):                               # ascending: the largest wins
            top[gram[a, b] > 0] = value
    else:
        sizes, sums, top = np.zeros(m), np.zeros(m), np.zeros(m)
        chunk = max(1, 2_000_000 // max(1, rows.shape[0]))
        for s in range(0, m, chunk):
            member = np.logical_and.reduce([rows[:, preds[s:s + chunk, k]] for k in range(level)])   # [N, chunk]
            weighted = member * errors[:, None]
            sizes[s:s + chunk] = np.count_nonzero(member, axis=0)
            sums[s:s + chunk] = weighted.sum(0)
            top[s:s + chunk] = weighted.max(0)
    scores = finder._score(sizes, sums, x_encoded.shape[0])
    return np.column_stack([scores, sums, top, sizes])


def _dense_rows(finder, x_encoded: sparse.spmatrix) -> np.ndarray:
    """``x_encoded`` [N, D] as a C-ordered bool array, built once per fit (cached on ``finder``)."""
    cache = finder.__dict__.setdefault("_dense_columns", {})
    if cache.get("key") is not x_encoded:
        cache.clear()
        cache["key"] = x_encoded
        cache["rows"] = np.ascontiguousarray(sparse.csr_matrix(x_encoded).astype(bool).toarray())   # [N, D] bool
    return cache["rows"]


def _column_max_errors(rows: np.ndarray, errors: np.ndarray) -> np.ndarray:
    """[D] the largest of ``errors`` [N] (>= 0) over the rows in each column of the 0 / 1 matrix ``rows`` [N, D]
    (0 for an empty column), over chunks of :data:`GRAM_CHUNK_ELEMENTS` // D rows: what
    ``x_encoded.T.multiply(errors).max(axis=1)`` returns (the same values: a max, no sums), without its
    O(nnz) COO copies (~60 MB at 46k targets x 34 attributes)."""
    n, d = rows.shape
    top = np.zeros(d)
    step = max(1, GRAM_CHUNK_ELEMENTS // max(1, d))
    for s in range(0, n, step):
        np.maximum(top, np.where(rows[s:s + step], errors[s:s + step, None], 0.0).max(0, initial=0.0), out=top)
    return top


def _row_chunked_grams(rows: np.ndarray, weights: list[np.ndarray]) -> list[np.ndarray]:
    """[``XᵀX``, then ``Xᵀ diag(w) X`` for each ``w`` in ``weights`` ([N] each)], [D, D] float64, of the 0 / 1
    matrix ``rows`` [N, D], summed over chunks of :data:`GRAM_CHUNK_ELEMENTS` // D rows: memory O(chunk × D), not
    O(N × D) float64 (whole-matrix copies made SliceLine's peak memory grow with the number of targets). Integer
    weights give integer sums, exact in float64 whatever the chunking."""
    n, d = rows.shape
    out = [np.zeros((d, d)) for _ in range(len(weights) + 1)]
    step = max(1, GRAM_CHUNK_ELEMENTS // max(1, d))
    for s in range(0, n, step):
        x = rows[s:s + step].astype(np.float64)                                  # [chunk, D]
        out[0] += x.T @ x
        for acc, w in zip(out[1:], weights):
            acc += x.T @ (x * w[s:s + step, None])
    return out


def _pin_numpy_kernels() -> None:
    """Make sliceline use its NumPy code whatever else is installed. sliceline 0.3 switches three of its kernels
    (slice scores, their upper bounds, candidate ids) to numba when numba happens to be importable, and those do
    not return the same top slices on the same data: on the demo audit the second top miss slice changed once a
    benchmark's extras (shap / shapiq) had brought numba into the environment. numba is not a dependency of this
    project, so a fresh install runs the NumPy code; pinning it keeps ``dvc repro``'s slices the same in every
    environment (``bench_slices.py`` with the pin: the same ranks and counts, 0.32 s for 20,000 persons)."""
    import sliceline.slicefinder as finder_module

    finder_module.NUMBA_AVAILABLE = False


@functools.cache
def _finder_class() -> type:
    """:class:`sliceline.slicefinder.Slicefinder` with :func:`_dense_eval` as its candidate evaluation and
    :func:`_column_max_errors` in its 1-slices (same search, pruning, scores and top-k; tests/test_slices_speedups.py
    checks both return what the package's own code returns, bit for bit).
    ``threadpoolctl`` (a scikit-learn dependency, so present wherever ``sliceline`` is) keeps the products on one
    BLAS thread."""
    from sliceline.slicefinder import Slicefinder
    from threadpoolctl import threadpool_limits

    _pin_numpy_kernels()

    class _DenseEvalSlicefinder(Slicefinder):
        def _eval_slice(self, x_encoded, errors, slices, level):
            with threadpool_limits(1, user_api="blas"):     # [D, N] @ [N, D] is ms on one thread; OpenBLAS's
                out = _dense_eval(self, x_encoded, errors, slices, level)   # threads spin on a busy CPU (100x)
            return super()._eval_slice(x_encoded, errors, slices, level) if out is None else out

        def _create_and_score_basic_slices(self, x_encoded, n_col_x_encoded, errors):
            # the package's 1-slices (sliceline 0.3, Slicefinder._create_and_score_basic_slices) with the max error
            # per column from _column_max_errors instead of a sparse broadcast multiply (its peak memory)
            errors = np.asarray(errors, float).reshape(-1)
            slice_sizes = x_encoded.sum(axis=0).A[0]
            slice_errors = errors @ x_encoded
            max_slice_errors = _column_max_errors(_dense_rows(self, x_encoded), errors)
            valid = (slice_sizes >= self._min_sup_actual) & (slice_errors > 0)
            attr = np.arange(1, n_col_x_encoded + 1)[valid]
            sizes, sums, top = slice_sizes[valid], slice_errors[valid], max_slice_errors[valid]
            scores = self._score(sizes, sums, x_encoded.shape[0])
            return self._dummify(attr, n_col_x_encoded), np.column_stack((scores, sums, top, sizes))

    return _DenseEvalSlicefinder


def _sliceline(codes: pd.DataFrame, errors: np.ndarray, config: SliceConfig,
               dense: bool = True) -> list[tuple[dict[str, str], float]]:
    """(predicates, SliceLine score) of the top slices where ``errors`` (>= 0) is high; ``dense=False`` runs the
    package's own candidate evaluation (for checking :func:`_dense_eval`)."""
    from sliceline.slicefinder import Slicefinder

    if errors.max() <= 0:
        return []
    _pin_numpy_kernels()
    finder = (_finder_class() if dense else Slicefinder)(alpha=config.alpha, k=config.top_k, max_l=config.max_level,
                                                         min_sup=config.min_support, verbose=False)
    # the labels as integer codes in sorted-label order: the one-hot columns come out in the order the package gives
    # string labels (sorted), so the search is the same, without a [targets x attributes] array of Python objects
    coded = [pd.factorize(codes[c].astype(str), sort=True) for c in codes.columns]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        finder.fit(np.column_stack([k for k, _ in coded]).astype(np.int32), errors)
    found = []
    for row, st in zip(finder.top_slices_, finder.top_slices_statistics_):
        preds = {col: str(labels[int(v)]) for col, (_, labels), v in zip(codes.columns, coded, row) if v is not None}
        if preds:
            found.append((preds, float(st["slice_score"])))
    return found


def describe(predicates: dict[str, str]) -> str:
    """A slice in words: ``'facing = back and height_px in [12, 40)'``."""
    return " and ".join(f"{col} in {val}" if val.startswith("[") else f"{col} = {val}"
                        for col, val in predicates.items())


def find_slices(attributes: pd.DataFrame, outcome: np.ndarray | pd.Series, config: SliceConfig | None = None,
                columns: Sequence[str] | None = None) -> pd.DataFrame:
    """The slices of ``attributes`` (rows: targets; ``columns``, default all) where ``outcome`` [N] deviates most.

    Returns one row per slice found, best SliceLine score first: ``slice`` (in words), ``predicates`` (dict column
    -> bin label), ``level``, ``direction`` (higher / lower), ``score`` (SliceLine's), ``size``, ``mean`` with
    ``ci_low`` / ``ci_high``, ``rest_mean``, ``diff`` with ``diff_low`` / ``diff_high``, ``p_value``, ``q_value``
    (Benjamini–Hochberg over the ``n_hypotheses`` slices of the lattice with enough support) and ``significant``
    (``q_value <= config.fdr``), ``redundant_of`` (the listed slice explaining it; such rows are dropped unless
    ``config.prune`` is off). Rows with a missing outcome are dropped first. Raises ``ValueError`` when
    ``outcome``'s length differs from the table's.
    """
    config = config or SliceConfig()
    y = np.asarray(outcome, float).reshape(-1)
    if len(y) != len(attributes):
        raise ValueError(f"outcome has {len(y)} values for {len(attributes)} attribute rows")
    keep = np.isfinite(y)
    codes = discretise(attributes.loc[keep], columns, config.n_bins, config.max_categories).reset_index(drop=True)
    y = y[keep]
    columns_out = ["slice", "predicates", "level", "direction", "score", "size", "mean", "ci_low", "ci_high",
                   "rest_mean", "diff", "diff_low", "diff_high", "p_value", "q_value", "significant",
                   "n_hypotheses", "redundant_of"]
    if len(y) < 2 * config.min_support or codes.shape[1] == 0:
        return pd.DataFrame(columns=columns_out)
    directions = ["higher", "lower"] if config.direction == "both" else [config.direction]
    found: dict[tuple, tuple[dict[str, str], float, str]] = {}
    for direction in directions:
        errors = y - y.min() if direction == "higher" else y.max() - y
        for preds, score in _sliceline(codes, errors, config):
            key = tuple(sorted(preds.items()))
            if key not in found or found[key][1] < score:
                found[key] = (preds, score, direction)
    m = lattice_size(codes, config.max_level, config.min_support)
    rows, masks = [], []
    for preds, score, direction in found.values():
        mask = np.logical_and.reduce([codes[c].to_numpy() == v for c, v in preds.items()])
        inside, outside = y[mask], y[~mask]
        masks.append(mask)
        rows.append({"slice": describe(preds), "predicates": preds, "level": len(preds), "direction": direction,
                     "score": score, "size": int(mask.sum()), "mean": float(inside.mean()),
                     "rest_mean": float(outside.mean()) if outside.size else float("nan"),
                     "diff": float(inside.mean() - outside.mean()) if outside.size else float("nan"),
                     "p_value": p_value(inside, outside)})
    if not rows:
        return pd.DataFrame(columns=columns_out)
    table = pd.DataFrame(rows).sort_values("score", ascending=False, kind="stable")
    masks = [masks[i] for i in table.index]
    table = table.reset_index(drop=True)
    padded = np.concatenate([table["p_value"].to_numpy(), np.ones(max(0, m - len(table)))])
    table["q_value"] = stats.false_discovery_control(padded, method="bh")[:len(table)]
    table["significant"] = table["q_value"] <= config.fdr
    table["n_hypotheses"] = max(m, len(table))
    significant = table["significant"].to_numpy()
    cutoff = table["p_value"][significant].max() if significant.any() else config.fdr / table["n_hypotheses"][0]
    streams = np.random.SeedSequence(config.seed).spawn(len(table))
    intervals: dict[int, tuple[float, float, float, float]] = {}

    def interval(rank: int) -> tuple[float, float, float, float]:
        """(ci_low, ci_high, diff_low, diff_high) of the slice at ``rank``, from its own random stream."""
        if rank not in intervals:
            gen = np.random.default_rng(streams[rank])
            inside, outside = y[masks[rank]], y[~masks[rank]]
            intervals[rank] = (*mean_interval(inside, config.confidence, config.n_boot, gen),
                               *difference_interval(inside, outside, config.confidence, config.n_boot, gen))
        return intervals[rank]

    table["redundant_of"] = _redundancy(table, masks, y, float(cutoff), config.min_support, interval)
    if config.prune:
        table = table[table["redundant_of"].isna()]
    bounds = np.array([interval(rank) for rank in table.index], float).reshape(-1, 4)
    table = table.assign(ci_low=bounds[:, 0], ci_high=bounds[:, 1], diff_low=bounds[:, 2], diff_high=bounds[:, 3])
    return table.reset_index(drop=True)[columns_out]


def _redundancy(table: pd.DataFrame, masks: list[np.ndarray], y: np.ndarray, threshold: float, min_support: int,
                interval: Callable[[int], tuple[float, ...]]) -> list[str | None]:
    """Per slice (in rank order; ``masks`` [N] bool each), the higher-ranked listed slice that explains it, else
    None. A slice (nearly) inside a listed one (fewer than ``min_support`` rows outside it) whose mean lies within
    the listed one's interval (``interval(rank)[:2]``, computed only for listed slices) adds nothing; a slice
    overlapping a listed one whose rows outside it do not differ from the rows outside both (p above
    ``threshold``, the Benjamini-Hochberg cutoff the table's slices were held to) only deviates because of the
    overlap (a generalisation, or a sibling sharing a predicate)."""
    out: list[str | None] = []
    kept: list[int] = []
    for i in range(len(table)):
        why = None
        for k in kept:
            if not (masks[i] & masks[k]).any():
                continue
            own = masks[i] & ~masks[k]
            if own.sum() < min_support:
                low, high = interval(k)[:2]
                explained = low <= table.at[i, "mean"] <= high
            else:
                explained = p_value(y[own], y[~(masks[i] | masks[k])]) > threshold
            if explained:
                why = table.at[k, "slice"]
                break
        out.append(why)
        if why is None:
            kept.append(i)
    return out


def slice_mask(attributes: pd.DataFrame, predicates: dict[str, str], config: SliceConfig | None = None,
               reference: pd.DataFrame | None = None) -> np.ndarray:
    """[N] bool: the rows of ``attributes`` in the slice ``predicates``, binned as :func:`find_slices` bins them
    (pass the table the slices were found on as ``reference`` when ``attributes`` is a subset of it)."""
    config = config or SliceConfig()
    ref = attributes if reference is None else reference
    codes = discretise(ref, list(predicates), config.n_bins, config.max_categories).loc[attributes.index]
    return np.logical_and.reduce([codes[c].to_numpy() == v for c, v in predicates.items()])
