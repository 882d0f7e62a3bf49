"""detection/slices.py's fast paths return what the slow references return: the dense SliceLine candidate
evaluation what the package's own sparse one returns (same slices, same score bits), the BCa interval of the mean
what scipy.stats.bootstrap returns, and a slice's interval does not depend on which other slices are listed."""
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from detection.slices import SliceConfig, _sliceline, discretise, find_slices, mean_interval


def _codes(n, seed):
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "facing": rng.choice(["front", "back", "left", "right"], n),
        "shirt": rng.choice(["red", "blue", "green", "gray", "black"], n),
        "height_px": rng.lognormal(4.0, 0.6, n),
        "occlusion": rng.uniform(0, 1, n),
        "waving": rng.random(n) < 0.15,
        "crowd": rng.choice(["alone", "pair", "group"], n, p=[0.6, 0.3, 0.1]),
    })
    return discretise(frame), rng


@pytest.mark.parametrize("max_level", [2, 3])
@pytest.mark.parametrize("kind", ["binary", "counts", "continuous"])
def test_dense_candidate_evaluation_returns_what_sliceline_returns(max_level, kind):
    codes, rng = _codes(1500, max_level)
    weak = ((codes["facing"] == "back") & (codes["shirt"] == "red")).to_numpy()
    if kind == "binary":
        errors = (rng.random(len(codes)) < np.where(weak, 0.6, 0.3)).astype(float)
    elif kind == "counts":                                        # integers, several values: the XᵀX path's max
        errors = rng.poisson(np.where(weak, 3.0, 1.0)).astype(float)
    else:                                                         # a relevance share: the chunked path
        errors = np.clip(rng.normal(np.where(weak, 0.6, 0.4), 0.15), 0, 1)
    config = SliceConfig(max_level=max_level, top_k=15, min_support=10)
    dense = _sliceline(codes, errors, config, dense=True)
    stock = _sliceline(codes, errors, config, dense=False)
    assert len(stock) >= 10
    assert [p for p, _ in dense] == [p for p, _ in stock]
    assert [s for _, s in dense] == [s for _, s in stock]          # bit for bit


@pytest.mark.parametrize("n", [7, 60, 900])
def test_bca_interval_of_a_continuous_sample_is_scipys(n):
    x = np.random.default_rng(n).gamma(2.0, 1.0, n)
    lo, hi = mean_interval(x, 0.95, 1000, rng=np.random.default_rng(5))
    ref = stats.bootstrap((x,), np.mean, n_resamples=1000, method="BCa", vectorized=True,
                          rng=np.random.default_rng(5), batch=max(1, 4_000_000 // n)).confidence_interval
    np.testing.assert_allclose([lo, hi], [ref.low, ref.high], rtol=1e-10)


@pytest.mark.parametrize("n, p", [(40, 0.2), (300, 0.5), (2000, 0.05)])
def test_bca_interval_of_a_binary_sample_matches_scipys_within_resampling_noise(n, p):
    x = (np.random.default_rng(n).random(n) < p).astype(float)
    lo, hi = mean_interval(x, 0.95, 20000, rng=1)
    ref = stats.bootstrap((x,), np.mean, n_resamples=20000, method="BCa", vectorized=True,
                          rng=np.random.default_rng(2)).confidence_interval
    se = np.sqrt(x.mean() * (1 - x.mean()) / n)
    assert abs(lo - ref.low) <= 0.1 * se + 1 / n and abs(hi - ref.high) <= 0.1 * se + 1 / n, (lo, hi, ref)


def test_a_slices_interval_does_not_depend_on_pruning():
    codes, rng = _codes(1500, 7)
    planted = ((codes["facing"] == "back") & (codes["shirt"] == "red")).to_numpy()
    missed = (rng.random(len(codes)) < np.where(planted, 0.75, 0.3)).astype(float)
    config = SliceConfig(n_boot=500)
    pruned = find_slices(codes, missed, config)
    full = find_slices(codes, missed, config.model_copy(update={"prune": False}))
    assert len(full) > len(pruned) >= 1 and full["ci_low"].notna().all()
    cols = ["slice", "ci_low", "ci_high", "diff_low", "diff_high", "q_value"]
    merged = pruned[cols].merge(full[cols], on="slice", suffixes=("", "_full"))
    assert len(merged) == len(pruned)
    for c in cols[1:]:
        assert np.array_equal(merged[c], merged[f"{c}_full"]), c


@pytest.mark.parametrize("level", [2, 3])
@pytest.mark.parametrize("kind", ["binary", "counts", "continuous"])
@pytest.mark.parametrize("gram_chunk", [1 << 20, 1000])            # one chunk of rows; chunks of 1000 // D rows
def test_dense_statistics_equal_the_packages_per_candidate(level, kind, gram_chunk, monkeypatch):
    from scipy import sparse
    from sklearn.preprocessing import OneHotEncoder
    from sliceline.slicefinder import Slicefinder

    import detection.slices
    from detection.slices import _dense_eval

    codes, rng = _codes(800, 11)
    x = OneHotEncoder(handle_unknown="ignore").fit_transform(codes.to_numpy(object)).tocsr()
    errors = {"binary": (rng.random(800) < 0.3).astype(float), "counts": rng.poisson(1.5, 800).astype(float),
              "continuous": rng.gamma(2.0, 0.2, 800)}[kind]
    widths = [codes[c].nunique() for c in codes.columns]
    starts = np.cumsum([0] + widths[:-1])
    feats = np.array([rng.choice(len(widths), level, replace=False) for _ in range(300)])
    cols = starts[feats] + rng.integers(0, np.array(widths)[feats])               # one value of each feature
    slices = sparse.csr_matrix((np.ones(cols.size, bool), cols.reshape(-1), np.arange(0, cols.size + 1, level)),
                               shape=(300, x.shape[1]))
    finder = Slicefinder(alpha=0.95, verbose=False)
    finder.average_error_ = float(errors.mean())
    monkeypatch.setattr(detection.slices, "GRAM_CHUNK_ELEMENTS", gram_chunk)
    ours = _dense_eval(finder, x, errors, slices, level)
    theirs = np.asarray(Slicefinder._eval_slice(finder, x, errors, slices, level), float)
    assert ours.shape == theirs.shape == (300, 4)
    assert np.array_equal(ours, theirs)


@pytest.mark.parametrize("kind", ["binary", "counts", "continuous"])
@pytest.mark.parametrize("gram_chunk", [1 << 20, 1000])
def test_basic_slices_equal_the_packages(kind, gram_chunk, monkeypatch):
    """The 1-slices (their predicates and [score, error sum, max error, size] rows) of the dense finder are the
    package's, bit for bit, whatever the row chunking of the column maxima; a column whose rows all have a zero
    error keeps max 0."""
    from sklearn.preprocessing import OneHotEncoder
    from sliceline.slicefinder import Slicefinder

    import detection.slices
    from detection.slices import _finder_class

    codes, rng = _codes(700, 13)
    x = OneHotEncoder(handle_unknown="ignore").fit_transform(codes.to_numpy(object)).tocsr()
    errors = {"binary": (rng.random(700) < 0.3).astype(float), "counts": rng.poisson(1.5, 700).astype(float),
              "continuous": rng.gamma(2.0, 0.2, 700)}[kind]
    errors[codes["facing"].to_numpy() == "left"] = 0.0
    monkeypatch.setattr(detection.slices, "GRAM_CHUNK_ELEMENTS", gram_chunk)
    ours, stock = _finder_class()(min_sup=5, verbose=False), Slicefinder(min_sup=5, verbose=False)
    for finder in (ours, stock):
        finder._min_sup_actual, finder.average_error_ = 5, float(errors.mean())
    slices, stats_ = ours._create_and_score_basic_slices(x, x.shape[1], errors)
    ref_slices, ref_stats = stock._create_and_score_basic_slices(x, x.shape[1], errors)
    assert (slices != ref_slices).nnz == 0 and slices.shape == ref_slices.shape
    assert np.array_equal(stats_, ref_stats) and len(stats_) > 10


def test_the_numba_kernels_are_never_used_even_where_sliceline_thinks_numba_is_installed(monkeypatch):
    """sliceline switches to numba kernels when numba is importable (a benchmark's extras bring it) and those return
    other top slices on the same data: the search must run sliceline's NumPy code in every environment."""
    import sliceline.slicefinder as finder_module

    def numba_kernel(*args, **kwargs):
        raise AssertionError("a numba kernel ran")

    codes, rng = _codes(600, 7)
    errors = (rng.random(len(codes)) < np.where((codes["facing"] == "back").to_numpy(), 0.7, 0.2)).astype(float)
    config = SliceConfig(max_level=2, top_k=5, min_support=10)
    before = _sliceline(codes, errors, config)
    monkeypatch.setattr(finder_module, "NUMBA_AVAILABLE", True)
    for name in ("score_slices_numba", "score_ub_batch_numba", "compute_slice_ids_numba"):
        monkeypatch.setattr(finder_module, name, numba_kernel)
    assert _sliceline(codes, errors, config) == before
    assert _sliceline(codes, errors, config, dense=False) == before
