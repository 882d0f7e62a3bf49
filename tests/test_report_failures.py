"""The report's "Where it fails" section: significant slices in words with intervals, MR-2 with intervals, miss
types with counts and part relevance; without ground truth it says it cannot be computed."""
import json
import re
from dataclasses import replace

import pandas as pd

from tasks.report import build_report
from tests.report_fixture import report_inputs


def _slice(outcome, rank, text, preds, mean, lo, hi, rest, significant=True, ctx=(0.31, 0.14), job=None):
    return {"outcome": outcome, "job": job, "rank": rank, "slice": text, "predicates": json.dumps(preds), "level": 2,
            "direction": "higher", "score": 1.0, "size": 40, "mean": mean, "ci_low": lo, "ci_high": hi,
            "rest_mean": rest, "diff": mean - rest, "diff_low": 0.1, "diff_high": 0.5, "p_value": 1e-5,
            "q_value": 0.001 if significant else 0.4, "significant": significant, "n_hypotheses": 50,
            "context_share": ctx[0], "context_share_rest": ctx[1]}


SUMMARY = {"ground_truth": True, "persons": 4, "explained": 4, "miss_rate": 0.25, "conf": 0.25,
           "job": "bayes_shapley@parts", "attributes": ["facing", "box_height"],
           "mr2": {"reasonable": {"mr2": 0.289, "low": 0.227, "high": 0.345, "persons": 268},
                   "small": {"mr2": None, "low": None, "high": None, "persons": 0}},
           "miss_types": [{"kind": "miss", "type": "suppressed", "count": 1, "share": 1.0, "miss_rate_gain": 0.25,
                           "ap_gain": 0.05},
                          {"kind": "miss", "type": "never_seen", "count": 0, "share": 0.0, "miss_rate_gain": 0.0,
                           "ap_gain": 0.0},
                          {"kind": "false_positive", "type": "background", "count": 2, "share": 1.0,
                           "miss_rate_gain": 0.0, "ap_gain": 0.01, "mr2_gain": 0.02},
                          {"kind": "false_positive", "type": "localisation", "count": 0, "share": 0.0,
                           "miss_rate_gain": 0.0, "ap_gain": 0.0, "mr2_gain": 0.0}],
           "mr_fppi": {"reasonable": {"fppi": [0.001, 0.01, 0.1, 1.0, 3.2], "miss_rate": [0.9, 0.6, 0.4, 0.2, 0.0]},
                       "small": {"fppi": [], "miss_rate": []}}}


def _inputs(tmp_path, **extra):
    inp = report_inputs(tmp_path)
    slices = pd.DataFrame([
        _slice("missed", 1, "facing = back and box_height in [17, 42)", {"facing": "back"}, 0.71, 0.62, 0.79, 0.38),
        _slice("missed", 2, "occluder = car", {"occluder": "car"}, 0.6, 0.4, 0.7, 0.3, significant=False),
        _slice("share:context", 1, "lighting in [0.5, 0.8)", {"lighting": "[0.5, 0.8)"}, 0.4, 0.3, 0.5, 0.15,
               job="bayes_shapley@parts")])
    misses = pd.DataFrame([{"image_id": "im1", "ann_id": "p3", "miss_type": "suppressed", "best_iou": 0.7,
                            "best_score": 0.5, "height": 70.0, "occlusion": 0.6}])
    return replace(inp, slices=slices, misses=misses,
                   evaluate_summary={**inp.evaluate_summary, "where_it_fails": {**SUMMARY, **extra}})


def test_the_section_states_significant_slices_in_words_mr2_and_miss_types(tmp_path):
    page, md = build_report(_inputs(tmp_path), per_row=0)
    assert re.findall(r'<section id="(\w+)">', page)[:3] == ["summary", "findings", "failures"]
    assert ("pedestrians with <b>facing = back and box height in [17, 42)</b>: miss rate 0.71 [0.62, 0.79] vs 0.38"
            in page)
    assert "their relevance sits more on the context (context share 0.31 vs 0.14)" in page
    assert "occluder = car" not in page                                 # not significant
    assert "context share 0.40 [0.30, 0.50] vs 0.15" in page
    assert "<td>0.289</td><td>[0.227, 0.345]</td>" in page and "<td>n/a</td><td>[n/a, n/a]</td>" in page
    section = page.split('id="failures"')[1].split("</section>")[0]
    assert "suppressed by NMS" in page
    # false positives: their own table, not mixed into the miss types
    misses, fps = section.split("What the false positives are")
    assert "background" not in misses and "background (nothing annotated near it)</td><td>2</td>" in fps
    assert "<th>AP gain</th><th>MR⁻² gain</th>" in fps and "<td>0.010</td><td>0.020</td>" in fps
    assert "## Where it fails" in md and "miss rate 0.71 [0.62, 0.79] vs 0.38" in md


def test_the_section_draws_the_miss_rate_vs_fppi_curves_from_the_summary(tmp_path, monkeypatch):
    import tasks.report as report

    drawn = []
    real = report.fig_mr_fppi
    monkeypatch.setattr(report, "fig_mr_fppi", lambda curves, mr2: drawn.append((curves, mr2)) or real(curves, mr2))
    page, _ = build_report(_inputs(tmp_path), per_row=0)
    section = page.split('id="failures"')[1].split("</section>")[0]
    assert 'alt="miss rate vs false positives per image"' in section and "data:image/png;base64," in section
    assert drawn[0][0] == SUMMARY["mr_fppi"]
    assert report.fig_mr_fppi({"small": {"fppi": [], "miss_rate": []}}, {}) is None     # nothing to draw
    page, _ = build_report(_inputs(tmp_path, mr_fppi=None), per_row=0)                  # evaluate before curves
    assert 'alt="miss rate vs false positives per image"' not in page and "<h3>Log-average miss rate" in page


def test_miss_types_carry_the_mean_part_share_of_their_explained_pedestrians(tmp_path):
    inp = _inputs(tmp_path)
    page, _ = build_report(inp, per_row=0)
    section = page.split('id="failures"')[1].split("</section>")[0]
    shares = inp.explanations[(inp.explanations["target_id"] == "p3")
                              & (inp.explanations["job"] == "bayes_shapley@parts")].iloc[0]
    rel = pd.Series(shares["relevance"], index=shares["region_names"])
    head = rel["head"] / rel.abs().sum()
    # p3 (the suppressed one, alone in its image): its head share, no interval from one image
    assert f"<td>{round(head, 2) + 0.0:.2f} [n/a, n/a]</td>" in section
    assert "<th>explained</th><th>images</th>" in section and "resampling images" in section


def test_without_ground_truth_the_section_says_it_cannot_be_computed(tmp_path):
    inp = replace(_inputs(tmp_path, ground_truth=False), ground_truth=False)
    page, md = build_report(inp, per_row=0)
    assert "Where the detector fails cannot be computed: the dataset has no annotated pedestrians" in page
    assert "miss rate 0.71" not in page and "Where the detector fails cannot be computed" in md


def test_an_evaluate_output_without_the_tables_leaves_the_section_out(tmp_path):
    page, _ = build_report(report_inputs(tmp_path), per_row=0)
    assert 'id="failures"' not in page


def test_a_curve_with_no_false_positive_still_shows_its_point(monkeypatch):
    """No false positive in a subset: its curve is the one point FPPI 0 (read_curve), which a log axis cannot place;
    it is drawn at the smallest plotted FPPI with a marker, not left an empty line with a legend entry."""
    import numpy as np

    import tasks.report as report
    from detection.miss_rate import CURVE_FPPI

    figs = []
    monkeypatch.setattr(report, "_png", lambda fig: figs.append(fig) or "png")
    curves = {"small": {"fppi": [0.0], "miss_rate": [0.4]},
              "reasonable": {"fppi": [0.001, 0.01, 0.1], "miss_rate": [0.9, 0.5, 0.3]}}
    assert report.fig_mr_fppi(curves, {"small": {"mr2": 0.4}}) == "png"
    lines = {line.get_label().split(" (")[0]: line for line in figs[0].axes[0].get_lines()}
    small = lines["small"]
    x, y = np.asarray(small.get_xdata(), float), np.asarray(small.get_ydata(), float)
    assert len(x) >= 1 and x.min() == CURVE_FPPI[0] and y.tolist() == [0.4] * len(y)
    assert small.get_marker() not in (None, "None", "", " ") and small.get_visible()
    assert len(lines["reasonable"].get_xdata()) >= 3                            # a curve keeps its steps


def test_curves_with_no_pedestrian_missed_are_left_out_not_an_error(tmp_path, monkeypatch):
    """Miss rate 0 at every FPPI has nothing to draw on a log axis (matplotlib raised "Data cannot be log-scaled"):
    that subset gets no curve and no legend entry; with nothing left, no figure, and the report goes without it."""
    import tasks.report as report

    assert report.fig_mr_fppi({"all": {"fppi": [0.1, 1], "miss_rate": [0, 0]}}, {}) is None
    page, _ = build_report(_inputs(tmp_path, mr_fppi={"all": {"fppi": [0.1, 1], "miss_rate": [0, 0]}}), per_row=0)
    assert 'alt="miss rate vs false positives per image"' not in page and "<h3>Log-average miss rate" in page
    figs = []
    monkeypatch.setattr(report, "_png", lambda fig: figs.append(fig) or "png")
    curves = {"all": {"fppi": [0.1, 1], "miss_rate": [0, 0]},
              "reasonable": {"fppi": [0.01, 0.1, 1], "miss_rate": [0.5, 0.3, 0.0]}}
    assert report.fig_mr_fppi(curves, {}) == "png"
    labels = [line.get_label().split(" (")[0] for line in figs[0].axes[0].get_lines()]
    assert labels == ["reasonable"]
    assert figs[0].axes[0].get_lines()[0].get_ydata().tolist() == [0.5, 0.3]
