"""OpenCV's HOG people detector as a ``kind: callable`` model (detection/models/hog.py) and the worked example of
auditing it without ground truth (examples/hog_people): it finds people on ultralytics' bus.jpg, and a folder of
photos runs through ``xai-audit audit --params ...`` to a report that says detection quality is not measured, shows
no AP, and has explanations and body parts for the detections."""
from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from detection.datasets.imageio import load_rgb, to_batch
from detection.models.hog import HogPeople, margin_to_score
from detection.models.specs import DetectorSpec, build_detector
from tasks.report import NO_GT_NOTE

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "hog_people" / "params.yaml"


def _asset(name: str) -> Path:
    """A photo the installed ultralytics ships, or a skip saying it is missing."""
    spec = importlib.util.find_spec("ultralytics")
    path = Path(next(iter(spec.submodule_search_locations))) / "assets" / name if spec else None
    if path is None or not path.is_file():
        pytest.skip(f"ultralytics' {name} is not installed (ultralytics/assets/{name}), nothing to detect on")
    return path


def test_margin_to_score_is_a_monotone_logistic():
    margins = np.array([-3.0, 0.0, 0.25, 0.5, 1.0, 2.0, 50.0])
    scores = margin_to_score(margins, center=0.5, scale=0.25)
    assert np.all(np.diff(scores) > 0) and scores[3] == 0.5 and 0 < scores[0] and scores[-1] <= 1
    assert np.allclose(scores[:-1], 1 / (1 + np.exp(-(margins[:-1] - 0.5) / 0.25)))
    with pytest.raises(ValueError, match="score_scale must be > 0"):
        margin_to_score(margins, scale=0.0)


@pytest.mark.parametrize("kwargs, message", [({"win_stride": [8]}, "win_stride"), ({"padding": [8, -1]}, "padding"),
                                             ({"scale": 1.0}, "scale"), ({"group_threshold": -1}, "group_threshold"),
                                             ({"max_side": 64}, "max_side")])
def test_bad_detector_arguments_are_errors_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=message):
        HogPeople(**kwargs)


def test_hog_finds_people_on_bus_jpg_through_a_callable_spec():
    image = to_batch([load_rgb(_asset("bus.jpg"))])                    # 810 x 1080, four people on a street
    spec = DetectorSpec(id="hog", kind="callable", entrypoint="detection.models.hog:people_detector", conf=0.5,
                        kwargs={"win_stride": [8, 8], "padding": [32, 32], "scale": 1.05, "max_side": 640})
    detector = build_detector(spec, "cpu", 4)
    assert detector.class_names == ["person"] and detector.input_format == "numpy"
    (det,) = detector.detect(image)
    assert (det.scores[:-1] >= det.scores[1:]).all(), "highest margin first: detection ids must not follow OpenCV's "\
                                                      "thread-dependent output order"
    people = det.scores >= spec.conf
    assert int(people.sum()) >= 2, f"HOG found {det.scores.tolist()} on bus.jpg"
    boxes = det.boxes[people]
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 810).all() and (boxes[:, 3] <= 1080).all()
    assert ((boxes[:, 1] + boxes[:, 3]) / 2 > 1080 / 3).all(), "a 'person' in the sky: the street is below"
    # candidates are the outputs themselves (a black box: OpenCV groups the windows), scores = the logistic margins
    candidates = detector.candidates(image)
    assert candidates.boxes.shape[1] == len(det.boxes)
    raw = detector.fn(np.asarray(load_rgb(_asset("bus.jpg")))[None])[0]
    assert np.allclose(raw["scores"], margin_to_score(raw["margins"]), atol=1e-6)


def test_the_example_params_are_valid_and_write_only_under_the_example():
    from tasks.params import load_params

    params = load_params(EXAMPLE, check_files=False)
    assert params.pull.source == "folder" and params.infer.detectors[0].kind == "callable"
    assert {j.targets for j in params.explain.jobs} == {"detections"}
    outputs = [params.pull.out_dir, params.infer.out_dir, params.parts.out_dir, params.explain.out_dir,
               params.evaluate.out_dir, params.models.out_dir, params.report.out]
    assert all(p.startswith("examples/hog_people/out/") for p in outputs), "the example would overwrite the project's"


@pytest.mark.slow
def test_folder_of_photos_audited_end_to_end_without_ground_truth(prefect_server, in_tmp, capsys):
    """The example's params on two small photos (half-size bus.jpg, and a blank image HOG finds nothing on), tiny
    budgets, through `xai-audit audit --params`: the report says what is not measured and shows the rest."""
    from flows.cli import default_stages, main

    from tasks import stages
    from tasks.params import load_params

    bus = Image.open(_asset("bus.jpg"))
    (in_tmp / "photos").mkdir()
    bus.resize((bus.width // 2, bus.height // 2)).save(in_tmp / "photos" / "bus.jpg")
    Image.new("RGB", (160, 120), (128, 128, 128)).save(in_tmp / "photos" / "blank.png")
    params = yaml.safe_load(EXAMPLE.read_text())
    text = yaml.safe_dump(params).replace("examples/hog_people/images", "photos").replace("examples/hog_people/out",
                                                                                          "out")
    params = yaml.safe_load(text)
    params["infer"]["detectors"][0]["kwargs"]["max_side"] = 480
    params["parts"]["grouping"] = "parts4"
    params["explain"]["jobs"] = [{"method": "bayes_shapley", "targets": "detections", "regions": "parts", "budget": 8},
                                 {"method": "occlusion", "targets": "detections", "regions": "parts"},
                                 {"method": "drise", "targets": "detections", "regions": "none", "budget": 8,
                                  "options": {"grid": 4, "center": True}}]
    params["evaluate"]["steps"] = 2
    (in_tmp / "params.yaml").write_text(yaml.safe_dump(params))

    assert main(["audit", "--params", "params.yaml"]) == 0          # --params after the sub-command too
    assert "skipping the models stage" in capsys.readouterr().err    # no infer model comes from it
    assert "models" in default_stages(str(REPO / "params.yaml"))     # the demo's do
    loaded = load_params("params.yaml")
    parts = stages.parts(loaded).read("parts").to_pylist()
    explanations = stages.explain(loaded).read("explanations").to_pylist()
    targets = stages.explain(loaded).read("targets").to_pylist()
    assert targets and all(t["kind"] == "detections" and t["found"] is None for t in targets)
    assert parts and {p["source"] for p in parts} == {"template"}
    assert {e["job"] for e in explanations} == {"bayes_shapley@parts", "occlusion@parts", "drise"}
    assert all(e["image_id"] == "bus.jpg" for e in explanations)
    sanity = json.loads(Path(loaded.evaluate.metrics).read_text())["sanity"]["jobs"]    # a black box: no layers
    assert set(sanity) == {"bayes_shapley@parts", "occlusion@parts", "drise"}
    assert all(e["status"].startswith("not applicable: ") and "black box" in e["status"] for e in sanity.values())

    page = Path(loaded.report.out).read_text()
    text = re.sub(r"<style>.*?</style>", "", re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page), flags=re.S)
    assert NO_GT_NOTE in text
    rest = text.replace(NO_GT_NOTE, "")
    assert "AP50" not in rest and not re.search(r"\bAP\d*\s+[\d.]", rest) and "missed by" not in rest
    summary = Path(loaded.report.summary).read_text()
    rows = [line for line in summary.split("## Detections (no ground truth)")[1].split("##")[0].splitlines()
            if line.startswith("| bus.jpg")]
    assert len(rows) == len(targets) and all("template" in r for r in rows)
    assert "| legs" in summary or "legs |" in summary
    assert f"in 1 of 2 images; {len(targets)} explained" in summary
