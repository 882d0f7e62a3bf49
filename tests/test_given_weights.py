"""The models stage with weights given in params: every model file it publishes is the given one, not one it
already had or trained. The given models differ from those already there (different random weights), so a stage
that ignored them would leave models/ as it was and fail here."""
import json
import shutil

from flows.keypoints import run_keypoints
from flows.models import run_models

import pytest
import torch
import yaml

from detection.models.classifier import ImageClassifier
from detection.models.keypoints import (
    KeypointNet,
    KeypointTraining,
    TopDownKeypoints,
    load_keypoint_model,
    save_keypoint_model,
)
from detection.models.scene_classifier import SceneNet, load_classifier, save_classifier
from detection.models.specs import file_sha256
from detection.models.yolo import YoloDetector
from tests.conftest import REPO

pytestmark = pytest.mark.slow

CONFIGS = {"detector": REPO / "detection/configs/yolo-person-tiny.yaml",
           "pose": REPO / "detection/configs/yolo-pose-tiny.yaml"}
IMAGES = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))


def _yolo(name: str, seed: int, path):
    """Random weights; the class-score biases set apart (a random YOLO's output hardly depends on its weights)."""
    from ultralytics import YOLO

    torch.manual_seed(seed)
    yolo = YOLO(str(CONFIGS[name]))
    with torch.no_grad():
        for branch in yolo.model.model[-1].cv3:
            branch[-1].bias.add_(seed)
    yolo.save(str(path))


def _classifier(seed: int, path):
    """TorchScript file and its .json sidecar, whose input size differs with the seed too."""
    torch.manual_seed(seed)
    save_classifier(ImageClassifier(SceneNet(4, width=4).eval(), ["person", "bicycle", "car", "pole"],
                                    multi_label=True, input_size=(16 * seed, 24 * seed), device="cpu"), path)


def _keypoints(seed: int, path):
    torch.manual_seed(seed)
    save_keypoint_model(TopDownKeypoints(KeypointNet(4), device="cpu"), path, KeypointTraining(width=4))


def _outputs(name: str, path) -> torch.Tensor:
    """What the stages downstream get from the model file: raw detector output, class probabilities, keypoints."""
    if name in CONFIGS:
        return YoloDetector(path, imgsz=64, device="cpu").raw(IMAGES)[0]
    if name == "classifier":
        return load_classifier(path, device="cpu").classify(IMAGES)
    return load_keypoint_model(path, device="cpu").predict(IMAGES, torch.tensor([[10.0, 5, 40, 60]]),
                                                           torch.tensor([0]))


MAKERS = {"detector": lambda s, p: _yolo("detector", s, p), "pose": lambda s, p: _yolo("pose", s, p),
          "classifier": _classifier, "keypoints": _keypoints}
FILES = {"detector": "detector.pt", "pose": "pose.pt", "classifier": "classifier.pt", "keypoints": "keypoints.pt"}


def test_given_weights_are_the_ones_published(prefect_server, in_tmp):
    models = in_tmp / "models"
    models.mkdir()
    for name, make in MAKERS.items():
        make(1, models / FILES[name])                   # what an earlier run left (trained)
        make(2, in_tmp / f"mine-{FILES[name]}")        # the weights the user gives
    before = {name: _outputs(name, models / FILES[name]) for name in MAKERS}
    given = {name: _outputs(name, in_tmp / f"mine-{FILES[name]}") for name in MAKERS}
    for name in MAKERS:                                 # the two really are different models
        assert not torch.allclose(before[name], given[name], atol=1e-4), name
    shutil.copy(in_tmp / "mine-classifier.json", in_tmp / "sidecar-check.json")

    params = {"seed": 0, "models": {name: {"weights": f"mine-{FILES[name]}"} for name in MAKERS}}
    (in_tmp / "params.yaml").write_text(yaml.safe_dump(params))
    info = run_models(in_tmp / "params.yaml")
    info["keypoints"] = run_keypoints(in_tmp / "params.yaml")

    for name in MAKERS:
        published = models / FILES[name]
        assert info[name]["source"] == f"given:mine-{FILES[name]}"
        assert file_sha256(published) == file_sha256(in_tmp / f"mine-{FILES[name]}") == info[name]["sha256"], name
        recorded = json.loads((in_tmp / "metrics" / "models" / f"{name}.json").read_text())
        assert recorded["sha256"] == info[name]["sha256"] and recorded["source"] == info[name]["source"]
        torch.testing.assert_close(_outputs(name, published), given[name], rtol=0, atol=0, msg=name)
    assert (models / "classifier.json").read_text() == (in_tmp / "sidecar-check.json").read_text()
