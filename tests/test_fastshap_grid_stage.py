"""The models_fastshap stage's classifier network (tasks.fastshap_stage, FastShapGrid): the shipped file is verified
and copied for the demo classifier, a file of another grid, perturbation or feature blocks, or trained for other
classifier weights, is refused naming the key; with weights null the stage trains on the training scenes (tiny
here: 6 scenes, 2 coalition pairs, 1 epoch); `audit` runs the stage for a fastshap_grid job reading its file; the
report shows the file's held-out check and counts the feature pass with the explainer forwards."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from explainers.fastshap_grid import FastShapGrid, FastShapGridCheckpoint
from tests.conftest import REPO
from tests.fastshap_params import grid_stage_params

DEMO = REPO / "weights/demo"
SHIPPED = DEMO / "fastshap_grid_classifier.pt"
TINY = {"scenes": 6, "heldout_scenes": 2, "pairs": 2, "epochs": 1, "rise": 8, "steps": 2}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def params_of(root: Path, weights=SHIPPED, classifier=DEMO / "classifier.pt", jobs=(), **net):
    return grid_stage_params(root, "classifier", weights, classifier=classifier, jobs=jobs, **net)


def test_the_stage_verifies_and_copies_the_shipped_network(tmp_path):
    from detection.models.specs import file_sha256
    from tasks.fastshap_stage import provide_grid_weights

    params = params_of(tmp_path)
    record = provide_grid_weights(params, progress=False)
    out = params.fastshap.grid_weights_file()
    ckpt = FastShapGridCheckpoint.load(SHIPPED)
    assert out == (tmp_path / "models/fastshap/classifier_grid.pt").resolve()
    assert file_sha256(out) == file_sha256(SHIPPED) == record["sha256"] and record["source"] == "copied"
    assert record["grid"] == [6, 8] and record["features"] == [2, 3] and record["perturbation"] == ckpt.perturbation
    assert record["heldout_deletion_auc_median"] == ckpt.heldout["deletion_auc_median"]
    assert record["heldout_rise_budget"] == 250 and record["train_scenes"] == [0, 3420]


@pytest.mark.parametrize("setting,named", [({"grid": [12, 16]}, "grid"), ({"features": []}, "features"),
                                          ({"perturbation": "blur"}, "perturbation")])
def test_a_network_of_another_game_is_refused_naming_the_setting(tmp_path, setting, named):
    from tasks.fastshap_stage import provide_grid_weights

    with pytest.raises(ValueError, match=rf"fastshap\.classifier\.weights: .*fastshap\.classifier\.{named}"):
        provide_grid_weights(params_of(tmp_path, **setting), progress=False)
    assert not (tmp_path / "models/fastshap/classifier_grid.pt").exists()


def test_a_network_for_other_classifier_weights_is_refused(tmp_path):
    from tasks.fastshap_stage import provide_grid_weights

    with pytest.raises(ValueError, match=r"fastshap\.classifier\.weights: .*trained for model weights"):
        provide_grid_weights(params_of(tmp_path, classifier=DEMO / "classifier_guided.pt"), progress=False)


def test_the_stage_trains_a_network_for_the_audited_classifier(tmp_path, monkeypatch):
    import tasks.fastshap_grid_train
    from tasks.fastshap_stage import grid_cache_folders, provide_grid_weights

    monkeypatch.setattr(tasks.fastshap_grid_train, "SHAPLEY_CHECK_BUDGET", 16)     # 4,000 forwards: seconds each
    params = params_of(tmp_path, weights=None, **TINY)
    record = provide_grid_weights(params, progress=False)
    ckpt = FastShapGridCheckpoint.load(params.fastshap.grid_weights_file())
    assert ckpt.heldout["shapley_budget"] == 16 and ckpt.heldout["shapley_targets"] == 2 * 4       # both scenes
    assert record["heldout_shapley_median_rel_l2"] == ckpt.heldout["shapley_median_rel_l2"] > 0
    assert record["source"] == "trained" and record["weights_sha256_12"] == ckpt.digest()
    assert ckpt.training["scenes"] == [0, 3] and ckpt.heldout["scene_range"] == [4, 6]
    assert record["heldout_targets"] == 2 * 4 and record["train_model_forwards"] == 6 * (2 + 2 * 2)
    coalitions, state = grid_cache_folders(params)
    assert any(coalitions.glob("*.parquet")) or any(coalitions.rglob("*.parquet"))
    assert not state.exists()                                  # finished: nothing left to resume
    from detection.scorers import ClassifierScorer
    from tasks.fastshap_stage import audited_classifier

    model = audited_classifier(params)
    image = torch.rand(3, *model.input_size)
    exp = FastShapGrid(ClassifierScorer(model), weights=ckpt).explain(image)
    assert exp.saliency.shape == (4, *model.input_size) and exp.n_forward == 2
    torch.testing.assert_close(exp.saliency.sum((1, 2)), exp.full_score - exp.empty_score, rtol=1e-4, atol=1e-5)
    # a larger audited dataset (pull.synthetic.n_images) reuses the same cache: the same network, no refusal
    synthetic = params.pull.synthetic.model_copy(update={"n_images": params.pull.synthetic.n_images + 10})
    bigger = params.model_copy(update={"pull": params.pull.model_copy(update={"synthetic": synthetic})})
    assert provide_grid_weights(bigger, progress=False)["weights_sha256_12"] == record["weights_sha256_12"]


def test_default_params_ship_the_network_and_a_job_reads_it(tmp_path):
    from flows.cli import fastshap_applies

    from ruamel.yaml import YAML

    from tasks.params import load_params

    params = load_params(REPO / "params.yaml", check_files=False)
    stage = YAML(typ="safe").load((REPO / "dvc.yaml").read_text())["stages"]["models_fastshap"]
    assert params.fastshap.classifier.weights == str(SHIPPED.relative_to(REPO)) in stage["deps"]
    assert "infer.classifier" in stage["params"] and "models/classifier.pt" in stage["deps"]
    jobs = [j for j in params.explain.jobs if j.method == "fastshap_grid"]
    assert jobs and all(j.targets == "classes" for j in jobs)
    assert Path(jobs[0].options["weights"]).resolve() == params.fastshap.grid_weights_file()
    assert fastshap_applies(params)
    only_grid = params.model_copy(update={"fastshap": params.fastshap.model_copy(update={"detector": None}),
                                          "explain": params.explain.model_copy(update={"jobs": jobs})})
    assert fastshap_applies(only_grid)                         # the grid job alone makes the stage run
    none = only_grid.model_copy(update={"fastshap": only_grid.fastshap.model_copy(update={"classifier": None})})
    assert not fastshap_applies(none)


def test_the_report_shows_the_grid_check_and_counts_the_feature_pass():
    import json

    from tasks.report import cost_table, learned_grid_table, learned_table

    heldout = {"scenes": 40, "targets": 160, "deletion_auc_median": 0.24, "rise_deletion_auc_median": 0.32,
               "insertion_auc_median": 0.99, "rise_insertion_auc_median": 0.99, "rise_budget": 250,
               "coalition_r2": 0.55}
    options = {"weights_sha256": "abc123", "heldout": heldout, "n_explainer_forward": 1, "n_feature_forward": 1}
    rows = pd.DataFrame({"kind": ["classifier"] * 2, "job": ["fastshap_grid"] * 2, "n_forward": [2, 2],
                         "shared_by": [4, 4], "device": ["cpu"] * 2,
                         "options": [json.dumps(options, sort_keys=True)] * 2})     # as the explain stage stores them
    grid = learned_grid_table(rows)
    assert len(grid) == 1 and grid.iloc[0]["deletion AUC ↓"] == 0.24 and grid.iloc[0]["RISE masks"] == 250
    # every key of both trained files' checks but the scene count is shown, each AUC beside RISE's
    from explainers import fastshap, fastshap_grid
    from tasks.report import HELDOUT_COLUMNS
    assert (set(fastshap.HELDOUT_KEYS) | set(fastshap_grid.HELDOUT_KEYS)) - {"scenes"} <= HELDOUT_COLUMNS.keys()
    assert grid.columns.tolist() == ["kind", "job", "trained file", "held-out targets", "deletion AUC ↓",
                                     "RISE deletion AUC", "insertion AUC ↑", "RISE insertion AUC", "RISE masks",
                                     "coalition R²"]
    assert learned_table(rows).empty                           # the body-part table's check is another kind
    cost = cost_table(rows)
    assert cost.iloc[0]["explainer forwards / explanation"] == pytest.approx(0.5)   # (1 + 1) / 4 classes
    assert cost.iloc[0]["forwards / explanation"] == pytest.approx(0.5)


# ----------------------------------------------------------------------------------------------- review's points
class ClassScorer:
    """Three classes: class c's score is the mean of colour channel c; a classifier ``model`` of ``input_size``."""

    device = torch.device("cpu")
    chunk_size = 64
    weights_sha256 = "grid-job-test"

    def __init__(self, input_size=(8, 12)):
        from types import SimpleNamespace

        self.targets = torch.arange(3)
        self.num_targets = 3
        self.model = SimpleNamespace(input_size=input_size, num_classes=3)

    def __call__(self, images):
        return images.mean((2, 3))[:, self.targets]


def test_a_classes_job_runs_through_the_explain_path_and_the_report_reads_its_check(tmp_path):
    """tasks.explain.explain_targets: one call for the image's classes (2 model forwards shared by 3, 1 explainer
    forward), efficient maps, and the rows' options carry every key of the stored check the report shows; an image of
    another size is an errors row, not a crash."""
    from tasks.explain import explain_targets
    from tasks.params import ExplainJob, ExplainParams
    from tasks.report import cost_table, learned_grid_table
    from tests.learned_fixture import GRID_HELDOUT, tiny_fastshap_grid

    path = tiny_fastshap_grid(3, (8, 12), "mean", "grid-job-test").save(tmp_path / "grid.pt")
    job = ExplainJob(method="fastshap_grid", targets="classes", regions="none", options={"weights": str(path)})
    targets = [{"image_id": "img", "target_id": f"c{c}", "kind": "classes", "category": c} for c in range(3)]
    image = torch.rand(3, 8, 12, generator=torch.Generator().manual_seed(0))
    errors: list[dict] = []
    rows = explain_targets(job, lambda group: ClassScorer(), image, targets, lambda t: {}, ExplainParams(), 0,
                           "cpu", errors, "img.png")
    assert not errors and [r["target_id"] for r in rows] == ["c0", "c1", "c2"]
    assert all(r["n_forward"] == 2 and r["shared_by"] == 3 for r in rows)
    frame = pd.DataFrame(rows).assign(kind="classes", job=job.name, device="cpu")
    grid = learned_grid_table(frame)
    assert grid.iloc[0]["RISE insertion AUC"] == GRID_HELDOUT["rise_insertion_auc_median"]
    assert grid.iloc[0]["held-out targets"] == GRID_HELDOUT["targets"]
    assert cost_table(frame).iloc[0]["explainer forwards / explanation"] == pytest.approx(1 / 3)
    rows = explain_targets(job, lambda group: ClassScorer(), torch.rand(3, 16, 12), targets, lambda t: {},
                           ExplainParams(), 0, "cpu", errors, "big.png")
    assert rows == [] and len(errors) == 1 and "(8, 12)" in errors[0]["message"]


def test_the_guard_refuses_a_classifier_of_another_input_size():
    """Before any work; a classifier of any size (input_size None) is explained on images of the network's size only
    (an image of another size: the errors row above)."""
    from tests.learned_fixture import tiny_fastshap_grid

    ckpt = tiny_fastshap_grid(3, (8, 12), "mean", "grid-job-test")
    with pytest.raises(ValueError, match=r"plays the game at \(8, 12\).*takes \(16, 24\)"):
        FastShapGrid(ClassScorer((16, 24)), weights=ckpt)
    assert FastShapGrid(ClassScorer(None), weights=ckpt).explain(torch.rand(3, 8, 12)).saliency.shape == (3, 8, 12)


def test_settings_that_leave_no_scene_to_train_are_refused_by_the_params():
    with pytest.raises(ValueError, match="heldout_scenes"):
        params_of(Path("."), weights=None, scenes=3, heldout_scenes=2)
    params_of(Path("."), weights=None, scenes=4, heldout_scenes=2)


def test_the_audited_dataset_size_does_not_move_the_coalition_cache(tmp_path):
    from tasks.fastshap_stage import grid_cache_folders

    base = params_of(tmp_path, weights=None, **TINY)
    bigger = base.model_copy(update={"pull": base.pull.model_copy(update={"synthetic": base.pull.synthetic.model_copy(
        update={"n_images": base.pull.synthetic.n_images + 10})})})
    assert grid_cache_folders(bigger)[0] == grid_cache_folders(base)[0]
    other = base.model_copy(update={"fastshap": base.fastshap.model_copy(update={
        "classifier": base.fastshap.classifier.model_copy(update={"pairs": 3})})})
    assert grid_cache_folders(other)[0] != grid_cache_folders(base)[0]
