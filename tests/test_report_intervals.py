"""Bootstrap intervals of the report's mean part shares (tasks.report_intervals): the means are the table's, the
image (cluster) bootstrap covers the truth at about its nominal rate where pedestrians of an image are correlated
(and the pedestrian bootstrap does not), every cell is seeded on its own, and the report shows them."""
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from detection.slices import mean_interval
from tasks.bootstrap import cell_seed
from tasks.report import build_report
from tasks.report_intervals import interval_text, linearised, share_intervals
from tests.report_fixture import report_inputs


def _clustered(rng: np.random.Generator, images: int = 40, mean: float = 0.1, image_sd: float = 0.1) -> pd.DataFrame:
    """1-6 pedestrians per image, share = mean + the image's effect (sd ``image_sd``) + noise (sd 0.1)."""
    sizes = rng.integers(1, 7, images)
    image = np.repeat(np.arange(images), sizes)
    share = mean + rng.normal(0, image_sd, images)[image] + rng.normal(0, 0.1, image.size)
    return pd.DataFrame({"image_id": [f"im{i:03d}" for i in image], "part": "head", "share": share, "bucket": "all"})


def _coverage(image_sd: float, reps: int = 200) -> dict:
    rng = np.random.default_rng(1)
    hits = {"images": 0, "pedestrians": 0}
    for r in range(reps):
        frame = _clustered(rng, image_sd=image_sd)
        for name, cluster in (("images", "image_id"), ("pedestrians", None)):
            row = share_intervals(frame, "bucket", cluster=cluster, seed=r, n_boot=1000).iloc[0]
            hits[name] += row.low <= 0.1 <= row.high
    return {k: v / reps for k, v in hits.items()}


def test_the_image_bootstrap_covers_the_mean_at_about_95_percent_where_pedestrians_of_an_image_correlate():
    correlated = _coverage(image_sd=0.1)            # intra-image correlation 0.5, ~3.5 pedestrians per image
    assert 0.88 <= correlated["images"] <= 0.99
    assert correlated["pedestrians"] <= 0.85        # resampling pedestrians ignores the correlation: too narrow
    independent = _coverage(image_sd=0.0)
    assert independent["images"] >= 0.88 and independent["pedestrians"] >= 0.88


def test_linearised_values_average_to_the_ratio_and_are_the_shares_with_one_pedestrian_per_image():
    sums, counts = np.array([0.5, 0.2, 0.9]), np.array([2, 1, 3])
    z = linearised(sums, counts)
    assert z.mean() == pytest.approx(sums.sum() / counts.sum())
    np.testing.assert_allclose(linearised(sums, np.ones(3)), sums)
    with pytest.raises(ValueError, match="must match"):
        linearised(sums, counts[:2])


def test_means_and_counts_are_the_tables_and_one_pedestrian_per_image_is_the_plain_bootstrap():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"image_id": [f"im{i:02d}" for i in range(30)] * 2, "part": ["head"] * 30 + ["torso"] * 30,
                          "share": rng.normal(0.1, 0.1, 60), "size": (["small", "large"] * 15) * 2})
    table = share_intervals(frame, "size", ["large", "small"], ["torso", "head"], label="x")
    assert list(zip(table["part"], table["bucket"])) == [("torso", "large"), ("torso", "small"), ("head", "large"),
                                                         ("head", "small")]
    expected = frame.groupby(["part", "size"])["share"].mean()
    np.testing.assert_allclose(table["mean"], [expected[(p, b)] for p, b in zip(table["part"], table["bucket"])])
    assert (table["n"] == 15).all() and (table["images"] == 15).all()
    head_small = frame[(frame["part"] == "head") & (frame["size"] == "small")].sort_values("image_id")["share"]
    low, high = mean_interval(head_small.to_numpy(), 0.95, 2000, np.random.default_rng(cell_seed(0, "x", "head",
                                                                                                   "small")))
    row = table[(table["part"] == "head") & (table["bucket"] == "small")].iloc[0]
    assert (row.low, row.high) == pytest.approx((low, high), rel=1e-12) and low < row["mean"] < high


def test_intervals_are_seeded_per_cell_and_need_two_images():
    rng = np.random.default_rng(2)
    frame = _clustered(rng).assign(bucket=lambda f: np.where(np.arange(len(f)) % 2, "a", "b"))
    both = share_intervals(frame, "bucket", ["a", "b"], label="k")
    again = share_intervals(frame, "bucket", ["a", "b"], label="k")
    pd.testing.assert_frame_equal(both, again)                                    # same bytes run after run
    alone = share_intervals(frame[frame["bucket"] == "b"], "bucket", ["a", "b"], label="k")
    assert alone.iloc[0].tolist() == both.iloc[1].tolist()                       # independent of the other cells
    other = share_intervals(frame, "bucket", ["a", "b"], label="k", seed=1)
    assert (other["low"] != both["low"]).all()
    one_image = frame[frame["image_id"] == frame["image_id"].iloc[0]]
    row = share_intervals(one_image, "bucket", label="k").iloc[0]
    assert np.isnan(row.low) and np.isnan(row.high) and np.isfinite(row["mean"])
    with pytest.raises(KeyError, match="image_id"):
        share_intervals(frame.drop(columns="image_id"), "bucket")


def test_interval_text():
    assert interval_text(0.284, 0.2051, 0.35) == "0.28 [0.21, 0.35]"
    assert interval_text(-0.001, float("nan"), 0.0) == "0.00 [n/a, 0.00]"


def test_the_report_shows_an_interval_table_under_each_breakdown_and_reruns_to_the_same_bytes(tmp_path):
    inp = report_inputs(tmp_path)
    # two more pedestrians in a third image so that some cells span two images and get an interval
    targets = inp.targets
    extra_t = targets[targets["target_id"].isin(["p1", "p2"])].assign(image_id="im2",
                                                                     target_id=lambda t: t["target_id"] + "b")
    ex = inp.explanations
    extra_e = ex[ex["target_id"].isin(["p1", "p2"])].assign(image_id="im2", target_id=lambda t: t["target_id"] + "b")
    inp = replace(inp, targets=pd.concat([targets, extra_t], ignore_index=True),
                  explanations=pd.concat([ex, extra_e], ignore_index=True))
    page, _ = build_report(inp, per_row=0)
    parts = page.split('id="parts"')[1].split("</section>")[0]
    missed = page.split('id="missed"')[1].split("</section>")[0]
    assert parts.count("<details class='intervals'>") == 3 and missed.count("<details class='intervals'>") == 1
    assert "<th>part</th><th>height</th><th>mean share [95 % interval]</th><th>n</th><th>images</th>" in parts
    assert "resampling images" in parts and "(6 in 3 images in all)" in parts
    # found p1, p1b (im0, im2): the head share's interval is over 2 images; missed p3 alone: n/a
    from tasks.report import part_shares
    shares = part_shares(inp.explanations, inp.targets)
    head = shares[(shares["job"] == "bayes_shapley@parts") & (shares["part"] == "head")].set_index("target_id")
    found_head = head.loc[head["found"] == True, "share"]  # noqa: E712
    assert f"<td>head</td><td>found</td><td>{round(found_head.mean(), 2) + 0.0:.2f} [" in missed
    p3 = interval_text(head.loc["p3", "share"], np.nan, np.nan)
    assert f"<td>head</td><td>missed</td><td>{p3}</td><td>1</td><td>1</td>" in missed
    assert build_report(inp, per_row=0)[0] == page
