"""The models_fastshap stage's detector grid network (tasks.fastshap_stage, FastShapGridDetector): the shipped file
is verified and copied for the demo detector; a file of another grid, head layers or perturbation, or trained for
other detector weights, is refused naming the key; with weights null the stage trains one on the training scenes
(tiny here: 8 scenes, 2 coalition pairs, 1 epoch); the default params ship it and a job reads it; a job on a black-box
detector is refused (it reads the head's maps); the report shows the file's held-out check beside D-RISE's."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from explainers.fastshap_grid_detector import FastShapGridDetector, FastShapGridDetectorCheckpoint
from tasks.params import parse_params
from tests.conftest import REPO
from tests.fastshap_params import grid_stage_params

DEMO = REPO / "weights/demo"
SHIPPED = DEMO / "fastshap_grid_detector.pt"
TINY = {"images": 8, "heldout": 2, "pairs": 2, "epochs": 1, "drise": 8, "steps": 2, "width": 8}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def params_of(root: Path, weights=SHIPPED, detector=DEMO / "detector.pt", jobs=(), **net):
    return grid_stage_params(root, "detector_grid", weights, detector=detector, jobs=jobs, **net)


def test_the_stage_verifies_and_copies_the_shipped_network(tmp_path):
    from detection.models.specs import file_sha256
    from tasks.fastshap_stage import provide_detector_grid_weights

    params = params_of(tmp_path)
    record = provide_detector_grid_weights(params, progress=False)
    out = params.fastshap.detector_grid_weights_file()
    ckpt = FastShapGridDetectorCheckpoint.load(SHIPPED)
    assert out == (tmp_path / "models/fastshap/detector_grid.pt").resolve()
    assert file_sha256(out) == file_sha256(SHIPPED) == record["sha256"] and record["source"] == "copied"
    assert record["grid"] == 9 and record["layers"] == [0, 1] and record["perturbation"] == ckpt.perturbation
    assert record["heldout_deletion_auc_median"] == ckpt.heldout["deletion_auc_median"]
    assert record["heldout_drise_budget"] == 1000 and record["train_pedestrians"] == ckpt.training["pedestrians"]


@pytest.mark.parametrize("setting,named", [({"grid": 7}, "grid"), ({"layers": [0]}, "layers"),
                                          ({"perturbation": "blur"}, "perturbation")])
def test_a_network_of_another_game_is_refused_naming_the_setting(tmp_path, setting, named):
    from tasks.fastshap_stage import provide_detector_grid_weights

    with pytest.raises(ValueError, match=rf"fastshap\.detector_grid\.weights: .*fastshap\.detector_grid\.{named}"):
        provide_detector_grid_weights(params_of(tmp_path, **setting), progress=False)
    assert not (tmp_path / "models/fastshap/detector_grid.pt").exists()


def test_a_network_for_other_detector_weights_is_refused(tmp_path):
    from ultralytics import YOLO

    from tasks.fastshap_stage import provide_detector_grid_weights

    other = tmp_path / "other.pt"                      # the demo detector with one weight changed
    model = YOLO(str(DEMO / "detector.pt"))
    with torch.no_grad():
        next(model.model.parameters()).add_(1.0)
    model.save(str(other))
    with pytest.raises(ValueError, match=r"fastshap\.detector_grid\.weights: .*trained for model weights"):
        provide_detector_grid_weights(params_of(tmp_path, detector=other), progress=False)


def test_the_stage_trains_a_network_for_the_audited_detector(tmp_path):
    from detection.scorers import DRiseScorer
    from tasks.fastshap_stage import audited_detector, detector_grid_cache_folders, provide_detector_grid_weights

    params = params_of(tmp_path, weights=None, **TINY)
    record = provide_detector_grid_weights(params, progress=False)
    ckpt = FastShapGridDetectorCheckpoint.load(params.fastshap.detector_grid_weights_file())
    assert record["source"] == "trained" and record["weights_sha256_12"] == ckpt.digest()
    assert ckpt.training["scenes"] == [0, 6] and ckpt.heldout["scene_range"] == [6, 8]
    assert ckpt.training["detector"]["imgsz"] == 320 and record["heldout_drise_budget"] == 8
    coalitions, state = detector_grid_cache_folders(params)
    assert any(coalitions.rglob("*.parquet")) and not state.exists()     # cached; nothing left to resume
    boxes = torch.tensor([[40.0, 30.0, 140.0, 220.0], [150.0, 20.0, 230.0, 200.0]])
    exp = FastShapGridDetector(DRiseScorer(audited_detector(params), boxes, torch.ones(2, 1)),
                               weights=ckpt).explain(torch.rand(3, 240, 320))
    assert exp.saliency.shape == (2, 240, 320) and exp.n_forward == 2
    torch.testing.assert_close(exp.saliency.sum((1, 2)), exp.full_score - exp.empty_score, rtol=1e-4, atol=1e-5)
    # a network trained on another game setting (here: another conf) is refused when given back to the stage
    conf = params.infer.detectors[0].model_copy(update={"conf": 0.5})
    other = params.model_copy(update={"infer": params.infer.model_copy(update={"detectors": [conf]})})
    trained = str(params.fastshap.detector_grid_weights_file())
    spec = other.fastshap.detector_grid.model_copy(update={"weights": trained})
    given = other.model_copy(update={"fastshap": other.fastshap.model_copy(update={
        "detector_grid": spec, "out_dir": str(tmp_path / "again")})})
    with pytest.raises(ValueError, match=r"fastshap\.detector_grid\.weights: .*conf=0\.25.*conf=0\.5"):
        provide_detector_grid_weights(given, progress=False)


@pytest.mark.parametrize("module, section", [("tasks.fastshap_grid_detector_train", "FastShapGridDetectorNetParams"),
                                             ("tasks.fastshap_grid_train", "FastShapGridNetParams")])
def test_each_grid_trainers_options_are_its_params_section(module, section, capsys):
    """The trainer's CLI and the models_fastshap stage declare the recipe once: the CLI offers every training field
    of the params section (weights aside: the CLI's --weights is the audited model), with the section's defaults."""
    import importlib

    import tasks.params

    cls = getattr(tasks.params, section)
    with pytest.raises(SystemExit):
        importlib.import_module(module).main(["--help"])
    shown = capsys.readouterr().out
    for name in set(cls.model_fields) - {"weights"}:
        default = getattr(cls(), name)
        assert f"--{name.replace('_', '-')}" in shown and f"(default: {default!r})" in " ".join(shown.split()), name


def test_default_params_ship_the_network_and_a_job_reads_it():
    from flows.cli import fastshap_applies

    from ruamel.yaml import YAML

    from tasks.params import load_params

    params = load_params(REPO / "params.yaml", check_files=False)
    stage = YAML(typ="safe").load((REPO / "dvc.yaml").read_text())["stages"]["models_fastshap"]
    assert params.fastshap.detector_grid.weights == str(SHIPPED.relative_to(REPO)) in stage["deps"]
    jobs = [j for j in params.explain.jobs if j.method == "fastshap_grid_detector"]
    assert jobs and all(j.targets == "detections" for j in jobs)
    assert Path(jobs[0].options["weights"]).resolve() == params.fastshap.detector_grid_weights_file()
    only = params.model_copy(update={"fastshap": params.fastshap.model_copy(update={"detector": None,
                                                                                     "classifier": None}),
                                     "explain": params.explain.model_copy(update={"jobs": jobs})})
    assert fastshap_applies(only)                              # the job alone makes the stage run
    none = only.model_copy(update={"fastshap": only.fastshap.model_copy(update={"detector_grid": None})})
    assert not fastshap_applies(none)


@pytest.mark.parametrize("kind", ["callable", "onnx", "torchvision"])
def test_a_job_on_a_detector_without_a_yolo_head_is_refused(kind, tmp_path):
    from tasks.explain_jobs import check_jobs
    from tasks.params import ParamsError

    spec = {"id": "bb", "kind": kind, **{"callable": {"entrypoint": "m:f"}, "onnx": {"weights": "m.onnx"},
                                         "torchvision": {"arch": "fasterrcnn_resnet50_fpn", "weights": "m.pt"}}[kind]}
    job = {"method": "fastshap_grid_detector", "targets": "detections", "regions": "none",
           "options": {"weights": str(SHIPPED)}}
    data = {"infer": {"detectors": [spec]}, "explain": {"jobs": [job]}}
    with pytest.raises(ParamsError, match=r"explain\.jobs\[0\]: fastshap_grid_detector needs feature maps \(a "
                                          rf"white-box method: a PyTorch YOLO's detection head\): the detector 'bb' "
                                          rf"is kind '{kind}'"):
        check_jobs(parse_params(data, check_files=False))


def test_the_report_shows_the_check_beside_d_rise():
    from tasks.report import cost_table, learned_grid_table

    ckpt = FastShapGridDetectorCheckpoint.load(SHIPPED)
    explainer = FastShapGridDetector(None, weights=ckpt)
    options = {**explainer.options(), "n_explainer_forward": 1}
    rows = pd.DataFrame({"kind": ["detector"] * 3, "job": ["fastshap_grid_detector"] * 3, "n_forward": [2] * 3,
                         "shared_by": [3] * 3, "device": ["cpu"] * 3,
                         "options": [json.dumps(options, sort_keys=True)] * 3})   # as the explain stage stores them
    table = learned_grid_table(rows)
    assert table.columns.tolist() == ["kind", "job", "trained file", "held-out pedestrians", "deletion AUC ↓",
                                      "D-RISE deletion AUC", "insertion AUC ↑", "D-RISE insertion AUC",
                                      "D-RISE masks", "coalition R²"]
    row = table.iloc[0]
    assert row["deletion AUC ↓"] == ckpt.heldout["deletion_auc_median"] and row["D-RISE masks"] == 1000
    assert row["trained file"] == ckpt.digest()
    cost = cost_table(rows)
    assert cost.iloc[0]["forwards / explanation"] == pytest.approx(2 / 3)
    assert cost.iloc[0]["explainer forwards / explanation"] == pytest.approx(1 / 3)
