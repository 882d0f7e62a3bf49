"""The evaluate stage on awkward explanations: undefined metrics are counted (rows ``undefined:<metric>:<reason>``,
the summary's counts), never averaged as hits, misses or zeros; NaN saliency is an errors row; EPG's chance level
is stored beside it. No model is loaded: the causal metrics use a stand-in scorer."""
import numpy as np
import pyarrow as pa
import pytest
import torch

import tasks.evaluate
from detection.datasets.tables import rows_to_table
from tasks.evaluate import evaluate_image
from tasks.params import Params
from tests.helpers import write_image

H, W = 48, 64


class MeanScorer:
    device = "cpu"
    chunk_size = 8

    def __init__(self, targets: int):
        self.targets = targets

    def __call__(self, images):
        return images.mean((1, 2, 3))[:, None].expand(-1, self.targets)


def _explanation(target_id: str, grid: np.ndarray) -> dict:
    return {"image_id": "img", "target_id": target_id, "kind": "persons", "job": "drise",
            "saliency": grid.astype(np.float16).ravel(), "saliency_height": H, "saliency_width": W,
            "n_forward": 32, "shared_by": 5}


def _item(tmp_path) -> dict:
    uri = write_image(tmp_path / "img.png", size=(W, H))
    signed = np.zeros((H, W))
    signed[2:18, 2:8] = 1.0                 # all positive saliency inside the box (0, 0, 10, 20)
    signed[30:40, 40:50] = -0.5
    with_nan = signed.copy()
    with_nan[40, 60] = np.nan
    offset = np.ones((H, W))                # positive everywhere, peak in the box
    offset[5, 5] = 2.0
    grids = {"missed": np.zeros((H, W)), "nan": with_nan, "good": signed, "offset": offset, "flat_box": signed}
    boxes = {k: [0.0, 0.0, 10.0, 20.0] for k in grids}
    boxes["flat_box"] = [5.0, 5.0, 5.0, 25.0]                       # zero width: no pixel inside
    targets = {k: {"kind": "persons", "bbox": b, "parts_model": "gt", "parts_id": k} for k, b in boxes.items()}
    return {"image": {"image_id": "img", "uri": str(uri), "split": "val"}, "targets": targets,
            "explanations": [_explanation(k, g) for k, g in grids.items()], "parts": {}, "gt_boxes": {}}


@pytest.fixture
def evaluated(tmp_path, monkeypatch):
    monkeypatch.setattr(tasks.evaluate, "detection_scorer", lambda params, device, ts: MeanScorer(len(ts)))
    params = Params.model_validate({"evaluate": {"causal_split": None, "steps": 4}})
    errors = []
    rows = evaluate_image(_item(tmp_path), params, "cpu", errors)
    return rows, errors


def test_undefined_metrics_are_rows_with_a_reason_not_values(evaluated):
    rows, errors = evaluated
    by_target, body = {}, {}
    for r in rows:
        if "_body" in r["metric"]:
            body.setdefault(r["target_id"], {})[r["metric"]] = r["value"]
        elif "_curve_" not in r["metric"]:
            by_target.setdefault(r["target_id"], {})[r["metric"]] = r["value"]
    # No target has body parts: an empty body, counted as undefined (unless the map already is), not skipped.
    assert {k: sorted(v) for k, v in body.items()} == {
        k: [f"undefined:epg_body:{reason}", f"undefined:pointing_body:{reason}"] for k, reason in (
            ("missed", "constant_saliency"), ("nan", "nonfinite_saliency"), ("good", "empty_region"),
            ("offset", "empty_region"), ("flat_box", "empty_region"))}
    cost = {"n_forward": 32 / 5}
    # A constant (all-zero) map: before, pointing_box 1.0 (the first pixel is in the top-left box) and epg_box 0.0.
    assert by_target["missed"] == pytest.approx({
        **cost, "undefined:pointing_box:constant_saliency": 1.0, "undefined:epg_box:constant_saliency": 1.0,
        "undefined:deletion_auc:constant_saliency": 1.0, "undefined:insertion_auc:constant_saliency": 1.0})
    # One NaN pixel: before, EPG 0.0 and a deletion AUC; now undefined, and an errors row names it.
    assert by_target["nan"] == pytest.approx({
        **cost, "undefined:pointing_box:nonfinite_saliency": 1.0, "undefined:epg_box:nonfinite_saliency": 1.0,
        "undefined:deletion_auc:nonfinite_saliency": 1.0, "undefined:insertion_auc:nonfinite_saliency": 1.0})
    assert [(e["stage"], e["error_type"], e["image_id"]) for e in errors] == [("evaluate", "nonfinite_saliency",
                                                                                  "img")]
    assert "drise nan: 1 of 3072 stored saliency values are NaN or infinite" in errors[0]["message"]
    good = by_target["good"]
    assert good["pointing_box"] == 1.0 and good["epg_box"] == 1.0
    assert good["epg_box_chance"] == pytest.approx(200 / (H * W))                    # the box's share of the image
    assert {"deletion_auc", "insertion_auc"} <= set(good)
    # An offset map: its pointing game counts, its EPG (before: ~ the box's area share) does not.
    assert by_target["offset"]["pointing_box"] == 1.0
    assert by_target["offset"]["undefined:epg_box:positive_everywhere"] == 1.0
    assert "epg_box" not in by_target["offset"] and "epg_box_chance" not in by_target["offset"]
    # A zero-width box: before, a miss and EPG 0.0.
    flat = by_target["flat_box"]
    assert flat["undefined:pointing_box:empty_region"] == flat["undefined:epg_box:empty_region"] == 1.0
    assert "pointing_box" not in flat and "epg_box" not in flat and "deletion_auc" in flat
    curves = [r for r in rows if "_curve_" in r["metric"]]
    assert sorted({r["target_id"] for r in curves}) == ["flat_box", "good", "offset"]
    assert len(curves) == 3 * 2 * 5 and all(np.isfinite(r["value"]) for r in rows)


def test_the_summary_counts_undefined_values_and_averages_only_defined_ones(evaluated):
    from flows.evaluate import summarise, undefined_counts

    rows, _ = evaluated
    table = rows_to_table(rows, "metrics")
    job = summarise(table)["persons"]["drise"]
    assert job["pointing_box"] == 1.0 and job["epg_box"] == 1.0       # before: 0.6 (3 of 5) and 0.21
    assert job["epg_box_chance"] == round(200 / (H * W), 4)
    assert job["explanations"] == 5
    assert job["undefined"] == {
        "pointing_box": {"constant_saliency": 1, "empty_region": 1, "nonfinite_saliency": 1},
        "epg_box": {"constant_saliency": 1, "empty_region": 1, "nonfinite_saliency": 1, "positive_everywhere": 1},
        "deletion_auc": {"constant_saliency": 1, "nonfinite_saliency": 1},
        "insertion_auc": {"constant_saliency": 1, "nonfinite_saliency": 1},
        "pointing_body": {"constant_saliency": 1, "empty_region": 3, "nonfinite_saliency": 1},
        "epg_body": {"constant_saliency": 1, "empty_region": 3, "nonfinite_saliency": 1}}
    assert undefined_counts(table) == {"constant_saliency": 6, "empty_region": 8, "nonfinite_saliency": 6,
                                       "positive_everywhere": 1}


def test_a_constant_stored_grid_stays_constant_when_upsampled():
    from tasks.evaluate import _saliency

    row = {"saliency": np.full(6 * 8, 0.3, np.float16), "saliency_height": 6, "saliency_width": 8}
    sal = _saliency(row, (37, 53))
    assert sal.shape == (37, 53) and (sal == sal[0, 0]).all()
    assert torch.isnan(tasks.evaluate.pointing_game(sal[None], torch.ones(1, 37, 53, dtype=torch.bool))).all()


def test_every_metric_name_the_evaluate_stage_emits_is_declared(tmp_path, monkeypatch, evaluated):
    """Pedestrians (box, body, curves, cost), classes (box, objects) and agreements: every row name resolves to a
    declared metric of tasks.metric_names, undefined rows through their metric."""
    from tasks.evaluate import agreement_rows
    from tasks.metric_names import lookup
    from tasks.undefined import parse_undefined

    monkeypatch.setattr(tasks.evaluate, "classifier_view", lambda params, device, image: image)
    monkeypatch.setattr(tasks.evaluate, "classifier_scorer", lambda params, device, ts: MeanScorer(len(ts)))
    item = _item(tmp_path)
    signed = np.zeros((H, W))
    signed[2:18, 2:8], signed[30:40, 40:50] = 1.0, -0.5
    item["targets"] = {"cls": {"kind": "classes", "category": "person", "parts_model": None, "parts_id": None}}
    item["explanations"] = [{**_explanation("cls", signed), "kind": "classes", "job": "rise"}]
    item["gt_boxes"] = {"person": [[0.0, 0.0, 10.0, 20.0]], "car": [[40.0, 30.0, 50.0, 40.0]]}
    params = Params.model_validate({"evaluate": {"causal_split": None, "steps": 4}})
    classes = evaluate_image(item, params, "cpu", [])
    relevance = {"x@parts": [1.0, 2.0, 3.0, 4.0], "y@parts": [1.0, 1.0, 1.0, 1.0], "z@parts": [4.0, 3.0, 2.0, 1.0]}
    agreements = agreement_rows(pa.Table.from_pylist([
        {"image_id": "img", "target_id": "p", "kind": "persons", "job": job, "region_names": list("abcd"),
         "relevance": rel} for job, rel in relevance.items()]))
    emitted = {r["metric"] for r in [*evaluated[0], *classes, *agreements]}
    resolved = {name: lookup((parse_undefined(name) or (name,))[0]) for name in emitted}
    assert {"epg_objects", "epg_objects_chance", "agree:z@parts", "undefined:agree:y@parts:constant_relevance",
            "deletion_curve_04", "insertion_auc", "undefined:pointing_body:empty_region", "n_forward"} <= emitted
    assert [name for name, metric in resolved.items() if metric is None] == []
