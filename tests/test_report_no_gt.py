"""A dataset with no ground truth (a folder of photos): the explain targets leave found / missed unknown and the
report says that detection quality and missed pedestrians are not measured instead of printing an AP, a missed
count or 'false positive'; it shows the detections and their body-part relevance (parts6 names, keypoint source).
Also a model whose infer metrics are null (no person in the split) is shown as n/a, never formatted as a number."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

from detection.body import PART_GROUPS
from detection.datasets.tables import rows_to_table
from tasks.explain import build_targets
from tasks.params import parse_params
from tasks.report import NO_GT_NOTE, ReportInputs, build_report, part_shares
from tests.helpers import write_image

H, W = 48, 64
PARTS6 = [*PART_GROUPS["parts6"], "context"]
DETS = {"hog:a.png:000": ("a.png", 0.91, [4.0, 2.0, 20.0, 46.0]),
        "hog:a.png:001": ("a.png", 0.62, [30.0, 5.0, 44.0, 40.0])}


def _text(page: str) -> str:
    """The page without embedded images and CSS."""
    page = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    return re.sub(r"<style>.*?</style>", "", page, flags=re.S)


def _inputs(tmp_path, found=None, ground_truth=False) -> ReportInputs:
    """What the pipeline gives the report on a folder of two photos (b.png with no detection), a HOG-like detector,
    parts6 body parts from the template, three jobs on detections."""
    images = pd.DataFrame([{"image_id": n, "uri": str(write_image(tmp_path / n, size=(W, H), seed=i)), "split": "test",
                            "width": W, "height": H} for i, n in enumerate(("a.png", "b.png"))])
    targets = pd.DataFrame([{"image_id": im, "target_id": d, "kind": "detections", "category": "person", "bbox": box,
                             "height": box[3] - box[1], "occlusion": None, "found": found, "score": s,
                             "parts_id": d, "parts_model": "hog"} for d, (im, s, box) in DETS.items()])
    rng = np.random.default_rng(0)
    rows, metrics = [], []
    for d, (im, *_) in DETS.items():
        for job, rel in (("bayes_shapley@parts", rng.normal(size=len(PARTS6)).tolist()),
                         ("occlusion@parts", rng.normal(size=len(PARTS6)).tolist()), ("drise", None)):
            rows.append({"image_id": im, "target_id": d, "kind": "detections", "job": job,
                         "method": job.partition("@")[0], "relevance": rel, "region_names": PARTS6 if rel else None,
                         "saliency": rng.random(12).astype(np.float16), "saliency_height": 3, "saliency_width": 4,
                         "n_forward": 16, "shared_by": 1, "device": "cpu"})
            metrics += [{"image_id": im, "target_id": d, "kind": "detections", "job": job, "metric": m, "value": v}
                        for m, v in (("n_forward", 16.0), ("insertion_auc", rng.uniform()), ("epg_box", 0.7))]
    detections = pd.DataFrame([{"model_id": "hog", "image_id": im, "det_id": d, "category": "person", "score": s,
                                "above_conf": True, "bbox": box} for d, (im, s, box) in DETS.items()])
    jobs = [{"method": m, "regions": r, "targets": "detections", "budget": 16, "n_regions": 16, "split": None,
             "options": {}} for m, r in (("bayes_shapley", "parts"), ("occlusion", "parts"), ("drise", "none"))]
    return ReportInputs(
        images=images, targets=targets, explanations=pd.DataFrame(rows), metrics=pd.DataFrame(metrics),
        infer_metrics={"hog": {"all": {"ap50": None, "ap": None, "ap50_reasonable": None, "persons": 0}}},
        explain_params={"jobs": jobs}, evaluate_summary={"steps": 5, "causal_split": None},
        errors=pd.DataFrame(columns=["stage", "image_id", "uri", "error_type", "message"]), detector_id="hog",
        classifier_id=None, ground_truth=ground_truth, detections=detections,
        part_sources=pd.DataFrame([{"model_id": "hog", "det_id": d, "source": "template"} for d in DETS]))


def test_the_report_says_what_is_not_measured_and_shows_no_detection_quality(tmp_path):
    # found=False is what the explain stage wrote before it knew about datasets without ground truth
    for found in (None, False):
        page, summary = build_report(_inputs(tmp_path, found=found), per_row=2)
        text = _text(page)
        assert NO_GT_NOTE in text and NO_GT_NOTE in summary
        rest = text.replace(NO_GT_NOTE, "")
        assert "AP50" not in rest and not re.search(r"\bAP\d*\b\s*[\d.]", rest), "an AP figure without ground truth"
        for word in ("missed by", "missed ·", "false positive ·", "true positive ·", "found ·", "(val)"):
            assert word not in rest, word
        assert "Missed pedestrians" not in rest and "found vs missed" not in rest
        # the detections and their body-part relevance: one row per detection, parts6 names, the keypoint source
        table = summary.split("## Detections (no ground truth)")[1].split("##")[0]
        lines = [line for line in table.splitlines() if line.startswith("| a.png")]
        assert len(lines) == 2 and all("template" in line for line in lines)
        assert "left arm" in table and "right leg" in table and "context" in table
        assert "2 person detections above the detector's threshold in 1 of 2 images" in summary


def test_an_unknown_occlusion_gets_no_bucket_and_no_occlusion_figure(tmp_path):
    inp = _inputs(tmp_path)
    shares = part_shares(inp.explanations, inp.targets)
    assert shares["occlusion_bucket"].isna().all()          # was 'none' (no occlusion): a value nobody measured
    page, _ = build_report(inp, per_row=0)
    assert "alt=\"by occlusion" not in page and "alt=\"by person height" in page


def test_null_infer_metrics_are_shown_as_na_with_ground_truth(tmp_path):
    page, _ = build_report(_inputs(tmp_path, found=True, ground_truth=True), per_row=0)
    row = re.search(r"<td>detector</td><td>([^<]*)</td>", page).group(1)
    assert row == "hog: AP50 n/a (all images), reasonable n/a"
    assert NO_GT_NOTE not in page


def test_targets_without_ground_truth_leave_found_unknown():
    params = parse_params({"infer": {"detectors": [{"id": "hog", "kind": "yolo", "weights": "x.pt", "conf": 0.5}],
                                     "pose": None, "classifier": None},
                           "explain": {"min_height": 0, "jobs": [{"method": "occlusion", "targets": "detections"}]}},
                          check_files=False)
    images = rows_to_table([{"image_id": "a", "uri": "a.png", "width": W, "height": H, "split": "test"}], "images")
    dets = rows_to_table([{"run_id": "r", "model_id": "hog", "image_id": "a", "det_id": f"d{k}", "category": "person",
                           "score": s, "above_conf": s >= 0.5, "bbox": [1.0 + k, 2.0, 20.0, 40.0]}
                          for k, s in enumerate((0.9, 0.7))], "detections")
    no_gt = build_targets(params, images, rows_to_table([], "annotations"), dets, []).to_pylist()
    assert [(t["target_id"], t["found"], t["label_present"]) for t in no_gt] == [("d0", None, None), ("d1", None, None)]
    gt = rows_to_table([{"image_id": "a", "ann_id": "g", "category": "person", "bbox": [1.0, 2.0, 20.0, 40.0],
                         "area": 722.0, "iscrowd": False}], "annotations")
    with_gt = build_targets(params, images, gt, dets, []).to_pylist()
    assert [(t["target_id"], t["found"]) for t in with_gt] == [("d0", True), ("d1", False)]
