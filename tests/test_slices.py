"""Slice discovery: a planted slice is found and significant, nothing planted gives (almost) nothing significant,
and the bootstrap intervals cover the truth at about their nominal rate."""
import numpy as np
import pandas as pd
import pytest

from detection.slices import (
    SliceConfig,
    difference_interval,
    discretise,
    find_slices,
    lattice_size,
    mean_interval,
    slice_mask,
)


def _table(n, seed):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "facing": rng.choice(["front", "back", "left", "right"], n),
        "shirt": rng.choice(["red", "blue", "green", "gray", "black"], n),
        "height_px": rng.lognormal(4.0, 0.6, n),
        "occlusion": rng.uniform(0, 1, n),
        "waving": rng.random(n) < 0.15,
    }), rng


CONFIG = SliceConfig(n_boot=500)


def test_planted_slice_is_found_first_and_significant():
    attrs, rng = _table(1500, 0)
    planted = (attrs["facing"] == "back") & (attrs["shirt"] == "red")
    missed = (rng.random(len(attrs)) < np.where(planted, 0.75, 0.3)).astype(float)
    slices = find_slices(attrs, missed, CONFIG)
    top = slices.iloc[0]
    assert top["predicates"] == {"facing": "back", "shirt": "red"}
    assert top["significant"] and top["q_value"] < 1e-6
    assert top["ci_low"] <= 0.75 <= top["ci_high"] and top["diff_low"] > 0.2
    assert top["size"] == planted.sum()
    assert np.array_equal(slice_mask(attrs, top["predicates"], CONFIG), planted.to_numpy())
    assert slices["significant"].sum() <= 2          # its variants are pruned as explained by it
    assert top["n_hypotheses"] == lattice_size(discretise(attrs, n_bins=3), 2, CONFIG.min_support)


def test_nothing_planted_reports_at_most_one_significant_slice():
    for seed in range(3):
        attrs, rng = _table(1500, 10 + seed)
        missed = (rng.random(len(attrs)) < 0.3).astype(float)
        slices = find_slices(attrs, missed, CONFIG.model_copy(update={"direction": "both", "prune": False}))
        assert slices["significant"].sum() <= 1, slices[["slice", "p_value", "q_value"]]


def test_lower_relevance_share_found_with_direction_lower():
    attrs, rng = _table(1200, 3)
    small = attrs["height_px"] < np.quantile(attrs["height_px"], 1 / 3)
    share = np.clip(rng.normal(np.where(small, 0.2, 0.5), 0.15), 0, 1)     # a part's relevance share
    slices = find_slices(attrs, share, CONFIG.model_copy(update={"direction": "both"}))
    top = slices.iloc[0]
    assert top["direction"] == "lower" and list(top["predicates"]) == ["height_px"]
    assert top["predicates"]["height_px"].startswith("[") and top["significant"]
    assert top["ci_low"] <= 0.2 + 0.02 and top["ci_high"] >= 0.2 - 0.02


def test_intervals_cover_the_truth_at_about_the_nominal_rate():
    rng = np.random.default_rng(0)
    sims, p_in, p_out = 300, 0.3, 0.5
    cover_mean = cover_diff = 0
    for _ in range(sims):
        inside = (rng.random(60) < p_in).astype(float)
        outside = (rng.random(200) < p_out).astype(float)
        lo, hi = mean_interval(inside, n_boot=400, rng=rng)
        cover_mean += lo <= p_in <= hi
        dlo, dhi = difference_interval(inside, outside, n_boot=400, rng=rng)
        cover_diff += dlo <= p_in - p_out <= dhi
    # 300 draws of a 95 % interval: the coverage's own standard error is 1.3 points
    assert 0.90 <= cover_mean / sims <= 0.985, cover_mean / sims
    assert 0.90 <= cover_diff / sims <= 0.985, cover_diff / sims


def test_discretise_and_lattice_size():
    frame = pd.DataFrame({"h": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, np.nan], "b": [True, False] * 3 + [True],
                          "c": ["x", "x", "y", "y", "z", "w", "x"]})
    codes = discretise(frame, n_bins=2, max_categories=3)
    assert codes["h"].tolist() == ["[1, 3.5)"] * 3 + ["[3.5, 6]"] * 3 + ["n/a"]
    assert codes["b"].tolist() == ["yes", "no"] * 3 + ["yes"]
    assert codes["c"].tolist() == ["x", "x", "y", "y", "other", "other", "x"]
    # level 1 with support >= 2: h 2 bins (n/a has 1), b 2, c x / y / other -> 7; level 2 pairs counted below
    assert lattice_size(codes, 1, 2) == 7
    pairs = sum((codes.groupby(list(p)).size() >= 2).sum() for p in (["h", "b"], ["h", "c"], ["b", "c"]))
    assert lattice_size(codes, 2, 2) == 7 + pairs
    with pytest.raises(KeyError, match="'nope'"):
        discretise(frame, ["nope"])
    with pytest.raises(ValueError, match="3 values for 7 attribute rows"):
        find_slices(frame, np.zeros(3))
