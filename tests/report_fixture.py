"""A small but complete set of report inputs, built without models: pedestrians found and missed with body-part
relevance from three jobs (two Shapley-family, one pixel method), their agreement, undefined values, a classifier
with its spurious-cue probe, explain errors, and two image files for the gallery. Every section of the report has
something to render."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from detection.body import BODY_PARTS
from tasks.report import ReportInputs
from tests.helpers import write_image

H, W = 48, 64
PARTS = [*BODY_PARTS, "context"]
PERSONS = {  # target id -> (image, found, score, height, occlusion)
    "p1": ("im0", True, 0.92, 20.0, 0.0), "p2": ("im0", True, 0.61, 40.0, 0.3), "p3": ("im1", False, 0.04, 70.0, 0.6),
    "p4": ("im1", True, 0.35, 150.0, 0.05)}
CLASSES = {"c_person": ("im0", "person", False), "c_bicycle": ("im1", "bicycle", True)}
REGION_JOBS = ("bayes_shapley@parts", "occlusion@parts")


def _targets() -> pd.DataFrame:
    rows = [{"image_id": im, "target_id": t, "kind": "persons", "category": "person", "bbox": [2.0, 3.0, 14.0, 40.0],
             "height": h, "occlusion": occ, "found": f, "score": s, "spurious_cue": None}
            for t, (im, f, s, h, occ) in PERSONS.items()]
    rows += [{"image_id": im, "target_id": t, "kind": "classes", "category": c, "bbox": None, "height": None,
              "occlusion": None, "found": None, "score": None, "spurious_cue": cue}
             for t, (im, c, cue) in CLASSES.items()]
    return pd.DataFrame(rows)


def _explanations() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    rows = []

    def row(image_id, target_id, kind, job, relevance, names, n_forward, device="cpu"):
        return {"image_id": image_id, "target_id": target_id, "kind": kind, "job": job,
                "method": job.partition("@")[0], "relevance": relevance,
                "region_names": names, "saliency": rng.random(12).astype(np.float16), "saliency_height": 3,
                "saliency_width": 4, "n_forward": n_forward, "shared_by": 2 if kind == "classes" else 1,
                "device": device}

    for t, (im, *_) in PERSONS.items():
        for job in REGION_JOBS:
            rows.append(row(im, t, "persons", job, rng.normal(size=len(PARTS)).tolist(), PARTS, 48))
        rows.append(row(im, t, "persons", "drise", None, None, 128, "cuda:0"))
    for t, (im, *_) in CLASSES.items():
        rows.append(row(im, t, "classes", "rise", None, None, 64))
    return pd.DataFrame(rows)


def _metrics() -> pd.DataFrame:
    rng = np.random.default_rng(5)
    rows = []

    def add(image_id, target_id, kind, job, metric, value):
        rows.append({"image_id": image_id, "target_id": target_id, "kind": kind, "job": job, "metric": metric,
                     "value": float(value)})

    for t, (im, found, *_) in PERSONS.items():
        for job in (*REGION_JOBS, "drise"):
            add(im, t, "persons", job, "n_forward", 48)
            if not found and job == "drise":
                for m in ("pointing_box", "epg_box", "deletion_auc", "insertion_auc"):
                    add(im, t, "persons", job, f"undefined:{m}:constant_saliency", 1.0)
                continue
            for m in ("deletion_auc", "insertion_auc", "epg_box", "epg_body"):
                add(im, t, "persons", job, m, rng.uniform())
            add(im, t, "persons", job, "pointing_box", rng.integers(0, 2))
            add(im, t, "persons", job, "epg_box_chance", 0.1)
            add(im, t, "persons", job, "epg_body_chance", 0.05)
            if job == "occlusion@parts" and t == "p2":
                add(im, t, "persons", job, "undefined:pointing_body:empty_region", 1.0)
            else:
                add(im, t, "persons", job, "pointing_body", rng.integers(0, 2))
            for k in range(5):
                add(im, t, "persons", job, f"deletion_curve_{k:02d}", 1 - k / 4)
                add(im, t, "persons", job, f"insertion_curve_{k:02d}", k / 4)
        add(im, t, "persons", REGION_JOBS[0], f"agree:{REGION_JOBS[1]}", rng.uniform(-1, 1))
        add(im, t, "persons", REGION_JOBS[0], f"top_part_match:{REGION_JOBS[1]}", rng.integers(0, 2))
    for t, (im, _cat, _cue) in CLASSES.items():
        for m in ("epg_box", "epg_objects", "deletion_auc", "insertion_auc", "pointing_box"):
            add(im, t, "classes", "rise", m, rng.uniform())
        add(im, t, "classes", "rise", "epg_box_chance", 0.2)
        add(im, t, "classes", "rise", "epg_objects_chance", 0.3)
        add(im, t, "classes", "rise", "n_forward", 32)
    return pd.DataFrame(rows)


def report_inputs(tmp_path: Path) -> ReportInputs:
    images = pd.DataFrame([{"image_id": f"im{i}", "uri": str(write_image(tmp_path / f"im{i}.png", size=(W, H),
                                                                         seed=i)), "split": s}
                           for i, s in enumerate(("val", "train"))])
    jobs = [{"method": "bayes_shapley", "regions": "parts", "targets": "persons", "budget": 48, "n_regions": 0,
             "split": None, "options": {"prior": 0.5}},
            {"method": "occlusion", "regions": "parts", "targets": "persons", "budget": None, "n_regions": 0,
             "split": "val", "options": {}},
            {"method": "drise", "regions": "none", "targets": "persons", "budget": 128, "n_regions": 0,
             "split": None, "options": {}},
            {"method": "rise", "regions": "grid", "targets": "classes", "budget": 64, "n_regions": 16,
             "split": None, "options": {}}]
    errors = pd.DataFrame([{"stage": "explain", "image_id": "im9", "uri": "missing.png", "error_type": "unreadable",
                            "message": "no such file"}])
    return ReportInputs(
        images=images, targets=_targets(), explanations=_explanations(), metrics=_metrics(),
        infer_metrics={"det": {"val": {"ap50": 0.71, "ap50_reasonable": 0.83}},
                       "clf": {"val": {"mean_f1": 0.66},
                               "spurious": {"p_bicycle_absent_with_cue": 0.58, "p_bicycle_absent_without_cue": 0.12,
                                            "images_with_cue": 7, "images_without_cue": 30}}},
        explain_params={"jobs": jobs},
        evaluate_summary={"pointing_tolerance": 12.0, "steps": 4, "causal_split": "val",
                          "substrates": {"deletion": "mean (dataset mean colour)", "insertion": "blur (sigma 5)"}},
        errors=errors, detector_id="det", classifier_id="clf")
