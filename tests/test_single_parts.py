"""``xai-audit explain IMAGE --regions parts``: each pedestrian explained over its body parts, keypoints from the
configured pose model when it matches the box (else the template), the source recorded and printed, a per-part table
per pedestrian, the overlay written. Models come through ``kind: callable`` (tests/single_parts_models.py), so no
weights are needed; one test runs the demo models and is skipped when models/ has not been built."""
from __future__ import annotations

import json
from pathlib import Path

from flows.cli import main
from flows.single import choose_keypoints, explain_file

import numpy as np
import pytest
import yaml
from PIL import Image

from detection.body import BODY_PARTS
from detection.parts import Keypoints
from tasks.params import PartsParams
from tests.single_parts_models import BOX, DISC, H, W

REPO = Path(__file__).resolve().parents[1]
DETECTOR = {"id": "heads", "kind": "callable", "entrypoint": "tests.single_parts_models:head_detector"}


def _pose(confident: int = 17) -> dict:
    return {"id": "pose", "kind": "callable", "entrypoint": "tests.single_parts_models:template_pose",
            "kwargs": {"confident": confident}}


def _project(tmp_path: Path, pose: dict | None, grouping: str = "parts10") -> tuple[str, str]:
    """(image, params file): a dark 64x96 image with a bright disc where the person's head is."""
    yy, xx = np.mgrid[:H, :W] + 0.5
    cx, cy, r = DISC
    image = np.where(((xx - cx) ** 2 + (yy - cy) ** 2 <= r * r)[..., None], 255, 20).astype(np.uint8)
    path = tmp_path / "person.png"
    Image.fromarray(np.repeat(image, 3, 2)).save(path)
    params = {"infer": {"detectors": [DETECTOR], "pose": pose,
                        "classifier": {"id": "means", "kind": "callable",
                                       "entrypoint": "tests.single_parts_models:mean_classifier"}},
              "parts": {"grouping": grouping}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return str(path), str(tmp_path / "params.yaml")


def test_template_parts_without_a_pose_model_find_the_part_the_detector_looks_at(tmp_path, capsys):
    image, params = _project(tmp_path, pose=None)
    out = tmp_path / "overlay.png"
    result = explain_file(image, method="occlusion", regions="parts", out=str(out), params_file=params)
    assert result["keypoint_model"] == "no pose model in infer.pose"
    assert result["keypoint_sources"] == {"pose": 0, "template": 1}
    (person,) = result["pedestrians"]
    assert person["keypoints"] == "template" and person["box"] == BOX
    assert list(person["relevance"]) == [*BODY_PARTS, "context"]          # params' grouping parts10 + context
    assert person["top_part"] == "head"
    others = [abs(v) for n, v in person["relevance"].items() if n != "head"]
    assert person["relevance"]["head"] > 0.1 and person["relevance"]["head"] > 3 * max(others)
    assert "context" in person["relevance"] and abs(sum(person["share"].values())) <= 1.0 + 1e-9
    err = capsys.readouterr().err
    assert "keypoints: no pose model in infer.pose" in err
    assert "keypoints: template  top part: head" in err and "left_lower_leg" in err
    assert out.is_file() and Image.open(out).size[0] > 0


def test_pose_keypoints_are_used_when_the_pose_model_matches_the_box(tmp_path, capsys):
    image, params = _project(tmp_path, pose=_pose(), grouping="parts6")
    result = explain_file(image, method="occlusion", regions="parts", out=str(tmp_path / "o.png"), params_file=params)
    assert result["keypoint_model"] == "pose model 'pose': 1 person found"
    assert result["keypoint_sources"] == {"pose": 1, "template": 0}
    (person,) = result["pedestrians"]
    assert person["keypoints"] == "pose" and person["top_part"] == "head"
    assert set(person["relevance"]) == {"head", "torso", "left_arm", "right_arm", "left_leg", "right_leg", "context"}
    assert "keypoints: pose  top part: head" in capsys.readouterr().err


def test_too_few_confident_pose_keypoints_or_missing_pose_weights_fall_back_to_the_template(tmp_path):
    image, params = _project(tmp_path, pose=_pose(confident=2))
    result = explain_file(image, method="occlusion", regions="parts", out=str(tmp_path / "o.png"), params_file=params)
    assert result["keypoint_sources"] == {"pose": 0, "template": 1}
    missing = {"id": "pose", "kind": "yolo", "weights": str(tmp_path / "no-such-pose.pt")}
    image, params = _project(tmp_path, pose=missing)
    result = explain_file(image, method="occlusion", regions="parts", out=str(tmp_path / "o.png"), params_file=params)
    assert result["keypoint_model"] == f"pose model 'pose': {tmp_path / 'no-such-pose.pt'} not found"
    assert result["pedestrians"][0]["keypoints"] == "template"


def test_a_pixel_method_gives_each_part_its_saliency_mass_and_the_cli_prints_json(tmp_path, capsys):
    image, params = _project(tmp_path, pose=None)
    out = tmp_path / "drise.png"
    assert main(["explain", image, "--params", params, "--regions", "parts", "--method", "drise", "--budget", "16",
                 "--out", str(out)]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)              # stdout stays JSON; the tables go to stderr
    (person,) = result["pedestrians"]
    assert result["method"] == "drise" and result["n_forward"] == 16 and out.is_file()
    assert np.isfinite(list(person["relevance"].values())).all() and "head" in person["relevance"]
    assert "top part:" in captured.err


def test_parts_of_a_classifier_are_an_error_naming_it(tmp_path):
    image, params = _project(tmp_path, pose=None)
    with pytest.raises(ValueError, match="--regions parts: .*'means' is a classifier"):
        explain_file(image, model="means", method="occlusion", regions="parts", params_file=params)


@pytest.mark.parametrize("pose_box, confident, expected", [
    (BOX, 17, "pose"), (BOX, 2, "template"), ([40.0, 8.0, 64.0, 88.0], 17, "template"), (None, 0, "template")])
def test_the_keypoint_rule_is_the_parts_stage_rule(pose_box, confident, expected):
    from tasks.parts import choose_keypoints as stage_rule

    cfg = PartsParams()
    kps = Keypoints.template(BOX)
    flat = np.concatenate([kps.xy, np.where(np.arange(17) < confident, 0.9, 0.1)[:, None]], 1).ravel().tolist()
    pose = [] if pose_box is None else [{"bbox": pose_box, "keypoints": flat}]
    mine, source = choose_keypoints(BOX, pose, cfg)
    theirs, stage_source = stage_rule(BOX, None, {"persons": [], "pose": pose}, cfg)
    assert source == stage_source == expected
    assert np.array_equal(mine.xy, theirs.xy) and np.array_equal(mine.located, theirs.located)


def test_demo_models_on_a_synthetic_scene(monkeypatch, tmp_path, capsys):
    """The repository's params.yaml: demo detector, demo pose model with its top-down keypoint model."""
    needed = [REPO / "models" / f for f in ("detector.pt", "pose.pt", "keypoints.pt")]
    if not all(f.is_file() for f in needed):
        pytest.skip(f"demo models not built ({', '.join(str(f.relative_to(REPO)) for f in needed)}: make run or "
                    f"xai-audit models)")
    from detection.datasets.synthetic import SyntheticConfig, render_scene

    monkeypatch.chdir(REPO)                       # params.yaml names the models relative to the project root
    cfg = SyntheticConfig(persons_per_image=(1, 1), person_height=(0.5, 0.7), p_occluder=0.0, p_truncated=0.0,
                          distractors_per_image=(0, 1), spurious=None)
    sources = []
    for index in (1, 2):                          # one tall, unoccluded pedestrian each
        path = tmp_path / f"scene{index}.png"
        Image.fromarray(render_scene(cfg, seed=0, index=index).image).save(path)
        result = explain_file(str(path), method="occlusion", regions="parts", out=str(tmp_path / f"o{index}.png"))
        assert result["keypoint_model"].startswith("pose model 'demo-pose' with keypoints from models/keypoints.pt")
        assert result["pedestrians"] and (tmp_path / f"o{index}.png").is_file()
        sources += [p["keypoints"] for p in result["pedestrians"]]
    assert "pose" in sources, "the demo pose model placed no pedestrian's keypoints on its own kind of scene"
