"""Shipped demo weights: the manifest vouches for each file, the models stages refuse a file that differs, and the
default params use exactly the shipped files (listed as the models stages' DVC deps)."""
import json
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from detection.models.specs import file_sha256
from tasks.models import _given
from tasks.params import load_params
from tasks.shipped_weights import WeightsMismatchError, check, verify_given, write_manifest

REPO = Path(__file__).resolve().parents[1]
STAGE_OF = {"pose": "models_pose", "detector": "models_detector", "classifier": "models_classifier",
            "keypoints": "models_keypoints"}


def _shipped(tmp_path: Path) -> Path:
    folder = tmp_path / "shipped"
    folder.mkdir()
    (folder / "detector.pt").write_bytes(b"weights v1")
    write_manifest(folder)
    return folder


def test_a_file_that_differs_from_its_manifest_is_refused_naming_it(tmp_path):
    folder = _shipped(tmp_path)
    assert verify_given(folder / "detector.pt", "models.detector.weights") == file_sha256(folder / "detector.pt")
    (folder / "detector.pt").write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\n")
    with pytest.raises(WeightsMismatchError, match=r"models\.detector\.weights: .*detector\.pt has SHA-256"):
        verify_given(folder / "detector.pt", "models.detector.weights")
    assert check(folder) == [f"{folder / 'detector.pt'}: SHA-256 differs from {folder / 'manifest.json'}"]
    with pytest.raises(FileNotFoundError, match=r"params models\.pose\.weights: file not found"):
        verify_given(folder / "pose.pt", "models.pose.weights")


def test_the_models_stage_copies_a_verified_file_and_refuses_a_changed_one(tmp_path):
    folder = _shipped(tmp_path)
    params = load_params(REPO / "params.yaml")
    params = params.model_copy(update={"models": params.models.model_copy(update={
        "out_dir": str(tmp_path / "models"), "metrics_dir": str(tmp_path / "metrics")})})
    info = _given(params, "detector", str(folder / "detector.pt"))
    assert (tmp_path / "models" / "detector.pt").read_bytes() == b"weights v1"
    assert info["sha256"] == file_sha256(folder / "detector.pt")
    (folder / "detector.pt").write_bytes(b"weights v2")
    with pytest.raises(WeightsMismatchError):
        _given(params, "detector", str(folder / "detector.pt"))
    assert (tmp_path / "models" / "detector.pt").read_bytes() == b"weights v1"     # the old copy is untouched


def test_default_params_use_the_shipped_weights_and_dvc_tracks_them():
    params = load_params(REPO / "params.yaml")
    stages = YAML(typ="safe").load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in STAGE_OF.items():
        weights = getattr(params.models, name).weights
        assert weights, f"params.yaml models.{name}.weights: the default should be the shipped file"
        verify_given(REPO / weights, f"models.{name}.weights")          # in the manifest, same content
        assert json.loads((REPO / weights).parent.joinpath("manifest.json").read_text())["files"][Path(weights).name]
        deps = stages[stage]["deps"]
        assert weights in deps, f"dvc.yaml stages.{stage}.deps lacks {weights}: a new file would not re-run it"
    assert check(REPO / "weights" / "demo") == []
