"""``kind: callable`` detectors and classifiers in params: a factory named by ``entrypoint`` is imported and called
through the same builders as every other model, and each way it can fail names the model and the entrypoint."""
import sys

import pytest
import torch

from detection.models.specs import (
    ClassifierSpec,
    DetectorSpec,
    EntrypointError,
    build_classifier,
    build_detector,
    model_files,
    model_sha256,
)
from detection.scorers import ClassifierScorer, DRiseScorer
from tasks import model_cache
from tasks.params import ParamsError, parse_params
from tests import callable_models

DET = "tests.callable_models:bright_square_detector"


def _det(**kw) -> DetectorSpec:
    return DetectorSpec(id="mine", kind="callable", entrypoint=kw.pop("entrypoint", DET), **kw)


def _image() -> torch.Tensor:
    img = torch.zeros(1, 3, 40, 60)
    img[:, :, 10:20, 30:45] = 0.8
    return img


def test_detect_round_trip_through_params():
    params = parse_params({"infer": {"detectors": [{"id": "mine", "kind": "callable", "entrypoint": DET,
                                                    "kwargs": {"threshold": 0.5, "label": 1}}],
                                     "pose": None}}, check_files=False)
    spec = params.infer.detectors[0]
    assert spec.weights is None and spec.kwargs == {"threshold": 0.5, "label": 1}
    det = build_detector(spec, device="cpu")
    d = det.detect(_image())[0]
    assert d.boxes.tolist() == [[30.0, 10.0, 45.0, 20.0]]
    assert d.labels.tolist() == [1] and d.scores.tolist() == pytest.approx([0.8])
    assert det.class_names[int(d.labels[0])] == "car"
    # D-RISE through the scorer: the reference box on the unperturbed image scores its own score, masked: 0.
    scorer = DRiseScorer.for_detections(det, d)
    blank = _image()
    blank[:, :, 10:20, 30:45] = 0
    assert scorer(torch.cat([_image(), blank]))[:, 0].tolist() == pytest.approx([0.8, 0.0])


def test_factory_gets_kwargs_weights_and_device_once_per_process(tmp_path):
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"abc")
    spec = _det(kwargs={"threshold": 0.3}, weights=str(weights))
    callable_models.CALLS.clear()
    model_cache.detector_model.cache_clear()
    a = model_cache.detector_model(spec.model_dump_json(), "cpu", 8)
    b = model_cache.detector_model(spec.model_dump_json(), "cpu", 8)
    assert a is b
    assert callable_models.CALLS == [{"threshold": 0.3, "label": 0, "device": "cpu", "weights": str(weights)}]
    model_cache.detector_model.cache_clear()


def test_classifier_round_trip():
    spec = ClassifierSpec(id="bright", kind="callable", entrypoint="tests.callable_models:brightness_classifier")
    clf = build_classifier(spec, device="cpu")
    probs = ClassifierScorer(clf)(torch.stack([torch.ones(3, 8, 8), torch.zeros(3, 8, 8)]))
    assert probs.argmax(-1).tolist() == [0, 1]
    bad = spec.model_copy(update={"classes": ["dark", "bright"]})
    with pytest.raises(EntrypointError, match=r"'bright'.*classes \['bright', 'dark'\] differ"):
        build_classifier(bad, device="cpu")


@pytest.mark.parametrize("entrypoint, kw, message", [
    ("tests.no_such_module:make", {}, r"module 'tests.no_such_module' not found"),
    ("tests.callable_models:missing", {}, r"'tests.callable_models' has no attribute 'missing'"),
    ("tests.callable_models:NOT_CALLABLE", {}, r"int object is not callable"),
    ("tests.callable_models:raises", {}, r"the factory raised RuntimeError: the weights server is down"),
    ("tests.callable_models:not_a_detector", {}, r"returned a builtins.dict, which lacks \['detect', 'candidates'"),
    ("tests.callable_models:no_arguments", {}, r"returned a .*ImageClassifier, which lacks \['detect'"),
    (DET, {"kwargs": {"thresold": 0.5}}, r"does not take the arguments \['device', 'thresold'\]"),
    ("tests.callable_models:no_arguments", {"weights": "w.pt"}, r"does not take the arguments \['weights'\]"),
])
def test_errors_name_the_model_and_the_entrypoint(entrypoint, kw, message):
    with pytest.raises(EntrypointError, match=message) as err:
        build_detector(_det(entrypoint=entrypoint, **kw), device="cpu")
    assert str(err.value).startswith(f"params.yaml infer detector 'mine': entrypoint {entrypoint!r}: ")


def test_import_errors_inside_the_module_and_the_working_directory(tmp_path, monkeypatch):
    """A module in the working directory (the project root) is found even when it is not on sys.path (console
    scripts); an import that fails inside it is reported as such, not as a missing module."""
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_project_model.py").write_text(
        "from tests.callable_models import bright_square_detector as make\n")
    (tmp_path / "my_broken_model.py").write_text("import a_library_that_is_not_installed\n")
    for name in ("my_project_model", "my_broken_model"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    det = build_detector(_det(entrypoint="my_project_model:make"), device="cpu")
    assert det.detect(_image())[0].boxes.shape == (1, 4)
    with pytest.raises(EntrypointError, match=r"importing module 'my_broken_model' failed \(ModuleNotFoundError: "
                                              r"No module named 'a_library_that_is_not_installed'\)"):
        build_detector(_det(entrypoint="my_broken_model:make"), device="cpu")


@pytest.mark.parametrize("spec, message", [
    ({"kind": "callable"}, "needs 'entrypoint: package.module:factory'"),
    ({"kind": "callable", "entrypoint": "no_colon"}, "needs 'entrypoint: package.module:factory'"),
    ({"kind": "callable", "entrypoint": "a.b:c", "kwargs": {"device": "cpu"}}, r"kwargs may not set \['device'\]"),
    ({"kind": "yolo"}, "kind 'yolo' needs 'weights'"),
    ({"kind": "yolo", "weights": "m.pt", "entrypoint": "a:b"}, "'entrypoint' and 'kwargs' are for kind 'callable'"),
])
def test_params_errors_name_the_key(spec, message):
    with pytest.raises(ParamsError, match=r"infer\.detectors\[0\]: .*" + message):
        parse_params({"infer": {"detectors": [{"id": "mine", **spec}]}}, check_files=False)


def test_dumps_of_other_kinds_are_unchanged_and_hashes_follow_the_code(tmp_path, monkeypatch):
    """Existing specs dump (and so hash into run ids and config hashes) exactly as before the callable kind; a
    callable's hash follows its kwargs, weights and module source, and its files are what explain hashes."""
    assert DetectorSpec(id="d", weights="models/detector.pt").model_dump() == {
        "id": "d", "kind": "yolo", "weights": "models/detector.pt", "arch": None, "num_classes": None, "imgsz": 320,
        "conf": 0.25, "iou": 0.7, "person_class": "person", "keypoints": None}
    assert "entrypoint" not in ClassifierSpec(id="c", weights="models/classifier.pt").model_dump_json()
    spec = _det(kwargs={"threshold": 0.3})
    assert DetectorSpec.model_validate_json(spec.model_dump_json()) == spec
    base = model_sha256(spec)
    assert model_sha256(_det(kwargs={"threshold": 0.4})) != base
    assert [p.name for p in model_files(spec)] == ["callable_models.py"]

    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.chdir(tmp_path)
    module = tmp_path / "hashed_model.py"
    module.write_text("from tests.callable_models import bright_square_detector as make\n")
    mine = _det(entrypoint="hashed_model:make")
    before = model_sha256(mine)
    module.write_text("from tests.callable_models import bright_square_detector as make  # v2\n")
    assert model_sha256(mine) != before
    (tmp_path / "w.bin").write_bytes(b"1")
    assert {p.name for p in model_files(mine.model_copy(update={"weights": "w.bin"}))} == {"hashed_model.py",
                                                                                           "w.bin"}
