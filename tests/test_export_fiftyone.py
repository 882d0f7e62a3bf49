"""tasks/export_fiftyone.py on a small hand-built project whose evaluate outputs come from the evaluate stage's own
where_it_fails (the detector's candidates stubbed): the counts written equal the summary's and the slices' (what
the report shows), by default only the significant slices' pedestrians, and the folder follows FiftyOne's
serialized dataset layout. FiftyOne itself is not needed."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import tasks.audit_slices as audit
from detection.datasets.tables import DatasetTables, rows_to_table, write_table_atomic
from tasks import stages
from tasks.export_fiftyone import export_fiftyone, main, slice_label, slice_memberships
from tasks.params import Params
from tasks.shards import write_json

JOB = "bayes_shapley@parts"
W, H = 200, 100


def _project(root: Path, n_images: int = 20, per_image: int = 5, seed: int = 0) -> Params:
    """Persons facing back are mostly missed (the planted slice); some images have a background and a duplicate
    false positive; the even-numbered persons of each image are explained."""
    rng = np.random.default_rng(seed)
    params = Params()
    images, anns, drawn, dets, exps = [], [], [], [], []
    (root / "img").mkdir()
    for i in range(n_images):
        iid = f"im{i}"
        Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(root / "img" / f"{iid}.png")
        images.append({"image_id": iid, "uri": f"img/{iid}.png", "width": W, "height": H, "split": "val",
                       "source": "synthetic"})
        for k in range(per_image):
            aid, box = f"{iid}p{k}", [38.0 * k + 2, 10.0, 38.0 * k + 32, 90.0]
            facing = ["front", "back", "left", "right"][(i + k) % 4]
            anns.append({"image_id": iid, "ann_id": aid, "category": "person", "bbox": box, "area": 1.0,
                         "iscrowd": False, "occlusion": float(rng.uniform(0, 0.5))})
            drawn.append({"image_id": iid, "ann_id": aid, "facing": facing, "height_px": float(rng.uniform(40, 90))})
            if rng.random() > (0.85 if facing == "back" else 0.1):
                dets.append({"image_id": iid, "score": 0.9, "bbox": box})
            elif rng.random() < 0.5:
                dets.append({"image_id": iid, "score": 0.1, "bbox": box})          # below the threshold
            if k % 2 == 0:
                rel = rng.normal(0, 1, 3)
                exps.append({"image_id": iid, "target_id": aid, "kind": "persons", "job": JOB,
                             "method": "bayes_shapley", "regions": "parts",
                             "region_names": ["head", "torso", "context"],
                             "relevance": rel.tolist(), "saliency": rng.random(48 * 64).astype(np.float16),
                             "saliency_height": 48, "saliency_width": 64})
        if i % 3 == 0:
            dets.append({"image_id": iid, "score": 0.8, "bbox": [190.0, 0, 199, 20]})   # background
    found = [d for d in dets if d["score"] > 0.5 and d["bbox"][0] < 190]
    dets += [{**d, "score": 0.6, "bbox": [d["bbox"][0] + 2, *d["bbox"][1:]]} for d in found[:3]]    # duplicates
    dets = [{**d, "model_id": "demo-yolo", "det_id": f"d{n}", "category": "person", "above_conf": d["score"] >= 0.25}
            for n, d in enumerate(dets)]
    tables = DatasetTables.from_rows(images=images, annotations=anns, gt_parts=[], errors=[])
    pulled = stages.pull(params)
    tables.write(pulled.out_dir)
    write_table_atomic(rows_to_table(drawn, "attributes"), pulled.path("attributes"))
    write_table_atomic(rows_to_table(dets, "detections"), stages.infer(params).path("detections"))
    shard = stages.explain(params).shard_files(0, [JOB])[JOB]
    shard.parent.mkdir(parents=True)
    write_table_atomic(rows_to_table(exps, "explanations"), shard)
    return params


def _evaluate(params: Params, monkeypatch) -> dict:
    """The evaluate stage's where_it_fails on the project, the candidates before NMS being the final detections."""
    det = stages.infer(params).read("detections").to_pandas()

    def candidates(_params, images, _errors):
        out = {}
        for r in images:
            d = det[det["image_id"] == r["image_id"]]
            out[r["image_id"]] = (np.stack(d["bbox"].to_numpy()).reshape(-1, 4), d["score"].to_numpy(float))
        return out

    monkeypatch.setattr(audit, "_candidates", candidates)
    data = stages.pull(params).dataset()
    tables, _, summary = audit.where_it_fails.fn(
        params, data.images, data.annotations, stages.infer(params).read("detections"),
        stages.explain(params).read("explanations"), stages.pull(params).read("attributes"), None, None)
    ev = stages.evaluate(params)
    for name in ("slices", "misses"):
        write_table_atomic(tables[name], ev.path(name))
    write_json(ev.metrics, {"where_it_fails": summary})
    return summary


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = _project(tmp_path)
    return params, _evaluate(params, monkeypatch)


def _persons(out: Path) -> list[dict]:
    samples = json.loads((out / "samples.json").read_text())["samples"]
    return [g for s in samples for g in s["ground_truth"]["detections"]]


def test_default_export_holds_the_significant_slices_with_the_reports_sizes(project, tmp_path):
    params, summary = project
    slices = stages.evaluate(params).read("slices").to_pandas()
    sig = slices[slices["significant"]]
    assert (sig["outcome"] == "missed").any()                       # the planted slice was found
    counts = export_fiftyone(params, tmp_path / "fo")
    persons = _persons(tmp_path / "fo")
    assert counts.persons == len(persons) and all(p["slices"] for p in persons)
    for r in sig.itertuples():                                      # each slice: the report's n = size
        label = slice_label(r.outcome, r.slice)
        assert counts.slices[label] == r.size == sum(label in p["slices"] for p in persons)
    assert counts.persons < summary["persons"]                      # only the slices' pedestrians


def test_all_export_counts_equal_the_summary(project, tmp_path):
    params, summary = project
    Path("params.yaml").write_text("seed: 0\n")
    assert main(["--params", "params.yaml", "--out", str(tmp_path / "all"), "--all"]) == 0
    meta = json.loads((tmp_path / "all" / "metadata.json").read_text())
    counts = meta["info"]["xai_audit"]["counts"]
    assert "version" not in meta and meta["media_type"] == "image"   # FiftyOne's version-less (legacy) layout
    assert counts["persons"] == summary["persons"] == 100
    assert counts["missed"] == round(summary["miss_rate"] * summary["persons"])
    types = pd.DataFrame(summary["miss_types"])
    for kind, key in (("miss", "miss_types"), ("false_positive", "false_positives")):
        expected = {t: c for t, c in zip(types.loc[types["kind"] == kind, "type"],
                                         types.loc[types["kind"] == kind, "count"]) if c}
        assert counts[key] == expected and expected
    persons = _persons(tmp_path / "all")
    assert sum(p["outcome"] == "missed" for p in persons) == counts["missed"]


def test_the_sample_dicts_follow_fiftyones_layout(project, tmp_path):
    params, _ = project
    out = tmp_path / "fo"
    export_fiftyone(params, out)
    samples = json.loads((out / "samples.json").read_text())["samples"]
    s = next(s for s in samples if "saliency" in s)
    assert (out / s["filepath"]).is_file() and s["metadata"] == {"_cls": "ImageMetadata", "width": W, "height": H}
    # FiftyOne's legacy importer joins only ``filepath`` onto the folder: a label field's map_path must be absolute
    heat_path = Path(s["saliency"]["map_path"])
    assert heat_path.is_absolute() and heat_path.is_file()
    assert heat_path == (out / "fields" / "saliency" / heat_path.name).resolve()
    heat = np.asarray(Image.open(heat_path))
    assert s["saliency"]["_cls"] == "Heatmap" and heat.shape == (48, 64) and heat.max() == 255
    g = next(g for g in s["ground_truth"]["detections"] if "saliency_map" in g)
    assert np.load(out / g["saliency_map"]).shape == (48, 64)
    assert g["_cls"] == "Detection" and g["facing"] in {"front", "back", "left", "right"} and "share_head" in g
    x, y, w, h = g["bounding_box"]
    assert 0 <= x <= 1 and 0 <= y <= 1 and w == pytest.approx(30 / W) and h == pytest.approx(80 / H)
    preds = [p for s in samples for p in s["predictions"]["detections"]]
    assert {p["outcome"] for p in preds} <= {"true_positive", "false_positive", "ignored"}
    assert all("fp_type" in p for p in preds if p["outcome"] == "false_positive")
    assert all(p["confidence"] >= 0.25 for p in preds)


def test_a_slice_on_a_column_the_outcome_table_lacks_is_named():
    frame = pd.DataFrame({"missed": [0.0, 1.0], "facing": ["a", "b"]})
    slices = pd.DataFrame([{"outcome": "missed", "slice": "weather = rain", "predicates": '{"weather": "rain"}',
                            "significant": True}])
    with pytest.raises(KeyError, match="weather"):
        slice_memberships(frame, slices)
