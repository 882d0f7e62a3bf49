"""pull -> train-data -> models -> infer through Prefect, with tiny settings: tables, metrics, weights errors."""
import json

from flows.infer import run_infer
from flows.keypoints import run_keypoints
from flows.models import run_models, run_train_data
from flows.parts import run_parts
from flows.pull import run_pull

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

from detection.models.base import WeightsError
from detection.models.specs import file_sha256
from tests.conftest import REPO

pytestmark = pytest.mark.slow


def _params(path, **extra):
    params = {"seed": 0, "pull": {"synthetic": {"n_images": 12}},
              "models": {"train_data": {"n_images": 24},
                         "detector": {"epochs": 1, "arch": str(REPO / "detection/configs/yolo-person-tiny.yaml")},
                         "pose": {"epochs": 1, "arch": str(REPO / "detection/configs/yolo-pose-tiny.yaml")},
                         "classifier": {"epochs": 1}, "keypoints": {"epochs": 1}}}
    for key, value in extra.items():
        params[key] = {**params.get(key, {}), **value}
    path.write_text(yaml.safe_dump(params))
    return path


def test_trained_models_feed_infer_and_parts_given_weights_are_used_and_bad_ones_named(prefect_server, in_tmp):
    params = _params(in_tmp / "params.yaml")
    run_pull(params)
    run_train_data(params)
    trained = run_models(params)
    trained["keypoints"] = run_keypoints(params)
    assert {m["source"] for m in trained.values()} == {"trained"}
    for name in ("detector", "pose", "classifier", "keypoints"):
        assert (in_tmp / "models" / f"{name}.pt").is_file()
        assert json.loads((in_tmp / "metrics" / "models" / f"{name}.json").read_text())["source"] == "trained"

    metrics = run_infer(params)
    dets = pq.read_table(in_tmp / "data" / "infer" / "detections.parquet")
    assert set(dets["model_id"].to_pylist()) <= {"demo-yolo", "demo-pose"}
    assert dets["run_id"].unique().to_pylist() == [metrics["run_id"]]
    yolo = dets.filter(pc.equal(dets["model_id"], "demo-yolo"))
    assert yolo["weights_sha256"].unique().to_pylist() == [file_sha256(in_tmp / "models" / "detector.pt")]
    assert pc.all(pc.equal(yolo["above_conf"], pc.greater_equal(yolo["score"], 0.25))).as_py()
    pose = dets.filter(pc.equal(dets["model_id"], "demo-pose"))
    # The top-down keypoint model placed keypoints in every pose box above the threshold, and only there.
    confident = pc.and_(pose["above_conf"], pc.equal(pose["category"], "person"))
    assert pc.is_valid(pose["keypoints"]).to_pylist() == confident.to_pylist()
    assert all(len(k) == 51 for k in pose.filter(confident)["keypoints"].to_pylist())
    preds = pq.read_table(in_tmp / "data" / "infer" / "predictions.parquet")
    assert preds.num_rows == 12 * 4
    assert pc.min(preds["score"]).as_py() >= 0 and pc.max(preds["score"]).as_py() <= 1
    for model in ("demo-yolo", "demo-pose"):
        assert set(metrics[model]) == {"val", "all"} and "ap50" in metrics[model]["all"]
    assert "pck02" in metrics["demo-pose"]["all"]
    assert "mean_f1" in metrics["demo-scene"]["all"] and "spurious" in metrics["demo-scene"]
    assert json.loads((in_tmp / "metrics" / "infer.json").read_text())["run_id"] == metrics["run_id"]

    # Parts of every GT person and every person detection above the detector's threshold.
    parts_metrics = run_parts(params)
    parts = pq.read_table(in_tmp / "data" / "parts" / "parts.parquet")
    persons = pq.read_table(in_tmp / "data" / "pulled" / "annotations.parquet").filter(
        pc.equal(pc.field("category"), "person"))
    detected = yolo.filter(pc.equal(yolo["above_conf"], True)).filter(pc.equal(pc.field("category"), "person"))
    assert parts_metrics["targets"].get("gt", 0) == persons.num_rows > 0
    assert parts_metrics["targets"].get("demo-yolo", 0) == detected.num_rows
    assert parts.num_rows == 11 * (persons.num_rows + detected.num_rows)          # 10 parts + context
    assert set(parts["source"].to_pylist()) <= {"gt", "pose", "template"}
    assert parts_metrics["iou"]["gt"]["mean_iou"] > 0.8
    assert json.loads((in_tmp / "metrics" / "parts.json").read_text())["rows"] == parts.num_rows

    # Weights given in params (that they replace these: tests/test_given_weights.py); a bad one names its file.
    with pytest.raises(FileNotFoundError, match="models.keypoints.weights: .*nokp.pt"):
        run_keypoints(_params(in_tmp / "p7.yaml", models={"keypoints": {"weights": "nokp.pt"}}))
    (in_tmp / "bad.pt").write_bytes(b"not a model")
    with pytest.raises(WeightsError, match="bad.pt"):
        run_keypoints(_params(in_tmp / "p5.yaml", models={"keypoints": {"weights": "bad.pt"}}))

    # A missing weights file is an error that names it.
    bad = _params(in_tmp / "p3.yaml", infer={"detectors": [{"id": "x", "weights": "nope.pt"}], "pose": None,
                                             "classifier": None})
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        run_infer(bad)
    bad = _params(in_tmp / "p6.yaml", infer={"pose": {"id": "p", "weights": "models/pose.pt", "keypoints": "nokp.pt"}})
    with pytest.raises(FileNotFoundError, match="'p': keypoints: .*nokp.pt"):
        run_infer(bad)
