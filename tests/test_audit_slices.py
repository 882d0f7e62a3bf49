"""tasks/audit_slices.py: the per-pedestrian outcome rule, the slices table, MR-2 per subset, no ground truth."""
import json

import numpy as np
import pandas as pd
import pyarrow as pa

import tasks.audit_slices as audit
from detection.datasets.tables import rows_to_table
from tasks.audit_slices import (
    MISSED,
    miss_rates,
    outcome_table,
    person_outcomes,
    share_column,
    slice_rows,
    where_it_fails,
)
from tasks.params import Params


def _ann(image_id, ann_id, box, category="person", iscrowd=False, occlusion=0.0):
    return {"image_id": image_id, "ann_id": ann_id, "category": category, "bbox": box, "area": 1.0,
            "iscrowd": iscrowd, "occlusion": occlusion, "truncation": 0.0}


def _det(image_id, box, score, model="det", category="person"):
    return {"model_id": model, "image_id": image_id, "det_id": f"{image_id}:{score}", "category": category,
            "score": score, "above_conf": score >= 0.25, "bbox": box}


def test_a_person_is_missed_unless_matched_one_to_one_above_conf_and_crowds_are_not_persons():
    anns = rows_to_table([_ann("a", "p0", [0, 0, 10, 40]), _ann("a", "p1", [50, 0, 60, 40]),
                          _ann("a", "p2", [100, 0, 110, 40]), _ann("a", "c", [0, 100, 90, 140], iscrowd=True),
                          _ann("b", "car", [0, 0, 30, 30], category="car")], "annotations")
    dets = rows_to_table([_det("a", [0, 0, 10, 40], 0.9),               # p0 found
                          _det("a", [50, 0, 60, 40], 0.1),               # p1: only below conf
                          _det("a", [100, 0, 110, 40], 0.9, model="other"),   # p2: another model's detection
                          _det("a", [0, 100, 90, 140], 0.9)], "detections")
    out = person_outcomes(anns, dets, "det", "person", 0.25)
    assert out["ann_id"].tolist() == ["p0", "p1", "p2"]
    assert out["missed"].tolist() == [0.0, 1.0, 1.0]
    assert out["score"].tolist() == [np.float32(0.9), np.float32(0.1), 0.0]
    assert out["height"].tolist() == [40.0, 40.0, 40.0]


def _planted_frame(n=400, seed=0):
    rng = np.random.default_rng(seed)
    facing = rng.choice(["front", "back", "left", "right"], n)
    colour = rng.choice(["red", "blue", "green"], n)
    weak = (facing == "back") & (colour == "blue")
    missed = (rng.random(n) < np.where(weak, 0.9, 0.2)).astype(float)
    context = np.where(weak, 0.5, 0.1) + rng.normal(0, 0.05, n)
    frame = pd.DataFrame({"image_id": [f"i{k // 4}" for k in range(n)], "ann_id": [f"p{k}" for k in range(n)],
                          "facing": facing, "shirt_colour": colour, "height_px": rng.uniform(20, 200, n),
                          MISSED: missed, share_column("context"): np.where(np.arange(n) % 2 == 0, context, np.nan),
                          share_column("head"): rng.normal(0.3, 0.05, n)})
    return frame, weak


def test_the_slices_table_finds_a_planted_weak_slice_with_its_context_shift():
    frame, weak = _planted_frame()
    slices = slice_rows(frame, ["facing", "shirt_colour", "height_px"], "bayes_shapley@parts")
    miss = slices[slices["outcome"] == MISSED]
    top = miss.iloc[0]
    assert json.loads(top["predicates"]) == {"facing": "back", "shirt_colour": "blue"}
    assert top["significant"] and top["rank"] == 1 and top["job"] is None
    assert top["ci_low"] <= frame.loc[weak, MISSED].mean() <= top["ci_high"]
    assert top["context_share"] > top["context_share_rest"] + 0.2          # explained half of the slice
    assert set(slices["outcome"]) >= {MISSED, share_column("context")}
    ctx = slices[slices["outcome"] == share_column("context")].iloc[0]
    assert ctx["job"] == "bayes_shapley@parts" and ctx["direction"] == "higher" and ctx["significant"]
    table = rows_to_table(slices.drop(columns=["redundant_of"]).to_dict("records"), "slices")
    assert table.num_rows == len(slices)


def test_the_outcome_table_joins_drawn_computed_and_user_attributes_and_drops_unusable_columns():
    anns = rows_to_table([_ann("a", "p0", [0, 0, 10, 40]), _ann("a", "p1", [50, 0, 60, 80])], "annotations")
    dets = rows_to_table([_det("a", [0, 0, 10, 40], 0.9)], "detections")
    drawn = rows_to_table([{"image_id": "a", "ann_id": "p0", "facing": "back", "shirt_rgb": [1, 2, 3]},
                           {"image_id": "a", "ann_id": "p1", "facing": "front", "shirt_rgb": [1, 2, 3]}],
                          "attributes")
    user = pa.table({"image_id": ["a", "a"], "ann_id": ["p0", "p1"], "weather": ["rain", "sun"]})
    shares = pd.DataFrame({"image_id": ["a"], "ann_id": ["p1"], share_column("context"): [0.4]})
    frame, columns = outcome_table(anns, dets, drawn, None, user, shares, "det", "person", 0.25)
    assert "facing" in columns and "weather" in columns
    assert "shirt_rgb" not in columns and "stride" not in columns          # lists; all null
    assert frame[MISSED].tolist() == [0.0, 1.0]
    assert np.isnan(frame[share_column("context")].iloc[0]) and frame[share_column("context")].iloc[1] == 0.4


def test_mr2_per_subset_with_an_interval_around_it(monkeypatch):
    rng = np.random.default_rng(1)
    anns, dets, images = [], [], []
    for i in range(30):
        images.append({"image_id": f"i{i}"})
        for k in range(3):
            x = 30.0 * k
            h = [60.0, 70.0, 120.0][k]
            anns.append(_ann(f"i{i}", f"i{i}p{k}", [x, 0, x + 20, h], occlusion=[0.0, 0.0, 0.5][k]))
            if rng.random() < 0.7:
                dets.append(_det(f"i{i}", [x, 0, x + 20, h], float(rng.uniform(0.3, 1))))
        dets.append(_det(f"i{i}", [200, 0, 220, 60], float(rng.uniform(0, 0.6))))
    rates = miss_rates(pa.Table.from_pylist(images), rows_to_table(anns, "annotations"),
                       rows_to_table(dets, "detections"), "det", "person", n_boot=100)
    assert set(rates) == {"reasonable", "small", "heavy_occlusion"}
    assert rates["small"]["persons"] == rates["reasonable"]["persons"] == 60         # heights 60, 70; not occluded
    assert rates["heavy_occlusion"]["persons"] == 30
    monkeypatch.setattr(audit, "IMAGE_BATCH", 7)             # matched 7 images at a time: the same numbers
    batched = miss_rates(pa.Table.from_pylist(images), rows_to_table(anns, "annotations"),
                         rows_to_table(dets, "detections"), "det", "person", n_boot=100)
    for k, r in rates.items():
        assert {m: v for m, v in r.items() if m != "curve"} == {m: v for m, v in batched[k].items() if m != "curve"}
        assert r["curve"].to_lists() == batched[k]["curve"].to_lists()
    for r in rates.values():
        assert 0 < r["low"] <= r["mr2"] <= r["high"] < 1
        c = r["curve"]                        # miss rate vs FPPI: FPPI up, miss rate down, ending at the last FPPI
        assert len(c.fppi) > 5 and (np.diff(c.fppi) > 0).all() and (np.diff(c.miss_rate) <= 0).all()


def test_without_ground_truth_the_tables_are_empty_and_the_summary_says_why():
    images = pa.Table.from_pylist([{"image_id": "a", "uri": "a.png"}])
    tables, errors, summary = where_it_fails.fn(Params(), images, rows_to_table([], "annotations"),
                                                rows_to_table([], "detections"), rows_to_table([], "explanations"),
                                                None, None, None)
    assert tables["slices"].num_rows == 0 and tables["misses"].num_rows == 0 and errors == []
    assert summary["ground_truth"] is False and "cannot be computed" in summary["reason"]


def test_miss_types_typed_in_batches_equal_one_batch_and_skip_unreadable_images(monkeypatch):
    """The miss types (tasks.audit_slices.miss_types) are computed IMAGE_BATCH images at a time with an
    ErrorTally: batches of 4 images give the same misses table and type summary as one batch of all, images'
    rows are routed to their own batch, and an image whose candidates could not be computed is left out."""
    rng = np.random.default_rng(3)
    anns, dets, images = [], [], []
    for i in range(23):
        images.append({"image_id": f"i{i}", "uri": f"i{i}.png"})
        for k in range(int(rng.integers(0, 4))):
            box = [40.0 * k, 0.0, 40.0 * k + 20, 60.0]
            anns.append(_ann(f"i{i}", f"i{i}p{k}", box, occlusion=float(rng.uniform(0, 0.6))))
            if rng.random() < 0.6:
                dets.append(_det(f"i{i}", [b + float(rng.normal(0, 3)) for b in box], float(rng.uniform(0, 1)),
                                 model="demo-yolo"))
        dets.append(_det(f"i{i}", [200, 0, 220, 60], float(rng.uniform(0, 1)), model="demo-yolo"))
    anns.append(_ann("i5", "car", [0, 0, 30, 30], category="car"))
    images_t, anns_t, dets_t = (pa.Table.from_pylist(images), rows_to_table(anns, "annotations"),
                                rows_to_table(dets, "detections"))
    rows = person_outcomes(anns_t, dets_t, "demo-yolo", "person", 0.25)

    def candidates(params, imgs, errors):          # a stand-in detector: fixed candidates per image; i7 unreadable
        out = {}
        for img in imgs:
            if img["image_id"] == "i7":
                errors.append({"image_id": "i7", "error_type": "unreadable"})
                continue
            r = np.random.default_rng(int(img["image_id"][1:]))
            boxes = np.array([[40.0 * k + r.normal(0, 8), 0, 40.0 * k + 20, 60] for k in range(4)])
            out[img["image_id"]] = (boxes, r.uniform(0, 1, 4))
        return out

    monkeypatch.setattr(audit, "_candidates", candidates)
    results = []
    for batch in (4, 10_000):
        monkeypatch.setattr(audit, "IMAGE_BATCH", batch)
        errors = []
        results.append((*audit.miss_types(Params(), images_t, anns_t, dets_t, rows, errors), errors))
    (m4, s4, e4), (m1, s1, e1) = results
    assert len(m1) > 5 and m1["miss_type"].nunique() >= 2
    pd.testing.assert_frame_equal(m4, m1)
    pd.testing.assert_frame_equal(s4, s1)
    assert e4 == e1 == [{"image_id": "i7", "error_type": "unreadable"}]
    assert "i7" not in set(m1["image_id"]) and "i7" in set(rows.loc[rows["missed"] > 0, "image_id"])
    assert s1["count"].sum() > 0
