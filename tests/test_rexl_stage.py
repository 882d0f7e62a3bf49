"""RExL as a pipeline method: the models_rexl stage trains a policy for the audited classifier (weights null), or
verifies a given one and copies it, refusing a policy trained for other weights or another mode; an explain job's
policy is checked by check_jobs (the error names the job and the file); the policy's bytes are part of the job's
result-store key and of the explain config hash; and, end to end (slow: Prefect flows), a rexl job runs through
explain and evaluate (sanity check included) like any method, a changed policy recomputing only its own groups.

The audited models are the shipped demo weights (weights/demo); the policies are tiny (2 x 2 grid, a few dozen
MaskablePPO steps, a fixed-CNN state), trained once per module."""
from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import pytest
import torch

from tasks.explain_jobs import check_jobs
from tasks.params import ParamsError, parse_params
from tests.conftest import REPO, tiny_params
from tests.rexl_fixture import policy_file

DEMO = REPO / "weights/demo"
INFER = {"detectors": [{"id": "demo-yolo", "kind": "yolo", "weights": str(DEMO / "detector.pt"), "imgsz": 320,
                        "conf": 0.25, "iou": 0.5}],
         "pose": None, "classifier": {"id": "demo-scene", "kind": "saved", "weights": str(DEMO / "classifier.pt")}}
POLICY = {"grid": 2, "steps": 32, "n_envs": 8, "images": 2, "features": "fixed", "checkpoint_every": 16,
          "options": {"hidden": [16], "batch_size": 16}}
RISE = {"method": "rise", "targets": "classes", "regions": "none", "budget": 8, "split": "val"}


def rexl_job(policy) -> dict:
    return {"method": "rexl", "targets": "classes", "regions": "none", "split": "val",
            "options": {"policy": str(policy)}}


def params_dict(root: Path, weights=None, jobs=(), **policy) -> dict:
    return {"pull": {"synthetic": {"n_images": 4}}, "infer": INFER,
            "explain": {"jobs": list(jobs), "cache_dir": str(root / "store")},
            "rexl": {"out_dir": str(root / "models/rexl"), "metrics": str(root / "metrics/rexl.json"),
                     "checkpoint_dir": str(root / "checkpoints"),
                     "classifier": {**POLICY, **policy, "weights": None if weights is None else str(weights)}}}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The stage's training path on the demo classifier: (folder, metrics record, policy file)."""
    from tasks.rexl_stage import provide_policy

    root = tmp_path_factory.mktemp("rexl_stage")
    torch.set_num_threads(1)
    record = provide_policy(parse_params(params_dict(root), check_files=False), "classifier_deletion", progress=False)
    return root, record, root / "models/rexl/classifier_deletion.pt"


DETECTOR_CELLS = {"grid": 2, "images": 4, "min_height": 40, "features": {"kind": "detector_cells", "layers": [0]},
                  "steps": 8, "n_envs": 2, "checkpoint_every": 4,
                  "options": {"horizon": 2, "batch_size": 4, "width": 8, "value_width": 8}}


@pytest.fixture(scope="module")
def trained_detector(tmp_path_factory):
    """The stage's training paths on the demo detector (one box-conditioned agent for every pedestrian): the MLP
    policy by MaskablePPO, and the cell policy by MaskablePPO with a cell-policy actor (tasks.rexl_boxes_ppo), whose
    file is returned."""
    from explainers.rexl import PolicyCheckpoint
    from tasks.rexl_stage import provide_policy

    torch.set_num_threads(1)
    out = {}
    for name, spec in (("mlp", {**POLICY, "images": 4, "min_height": 40}), ("cells", DETECTOR_CELLS)):
        root = tmp_path_factory.mktemp(f"rexl_detector_{name}")
        data = params_dict(root)
        data["rexl"]["detector"] = spec
        del data["rexl"]["classifier"]
        record = provide_policy(parse_params(data, check_files=False), "detector_deletion", progress=False)
        assert record["conditioning"] == "box" and record["source"] == "trained"
        out[name] = (record, root / "models/rexl/detector_deletion.pt")
    assert out["mlp"][0]["features"] == "fixed" and out["cells"][0]["features"] == "detector_cells"
    ckpt = PolicyCheckpoint.load(out["cells"][1])
    assert ckpt.arch == "cells" and ckpt.width == 8 and ckpt.features["layers"] == [0]
    assert ckpt.training["algorithm"].startswith("MaskablePPO") and ckpt.training["pedestrians"] >= 1
    assert ckpt.training["horizon"] == 2 and ckpt.training["steps"] == 8
    return out["cells"][1]


# ------------------------------------------------------------------------------------------------ the stage
def test_a_model_takes_one_policy_per_mode(tmp_path):
    """rexl.detector as a list: a deletion and an insertion policy, each trained to <model>_<mode>.pt, errors naming
    the list's item; two policies of one mode (the same file) or an empty list are refused."""
    from explainers.rexl import PolicyCheckpoint
    from tasks.rexl_stage import provide_policy

    data = params_dict(tmp_path)
    del data["rexl"]["classifier"]
    data["rexl"]["detector"] = [DETECTOR_CELLS, {**DETECTOR_CELLS, "mode": "insertion"}]
    params = parse_params(data, check_files=False)
    policies = params.rexl.policies()
    assert list(policies) == ["detector_deletion", "detector_insertion"]
    assert [p.key for p in policies.values()] == ["rexl.detector[0]", "rexl.detector[1]"]
    assert params.rexl.policy("detector", "insertion").mode == "insertion" and params.rexl.policy("classifier") is None
    assert params.rexl.policy_file("detector_insertion") == (tmp_path / "models/rexl/detector_insertion.pt").resolve()
    assert params.rexl.policy_file("classifier_deletion") is None
    record = provide_policy(params, "detector_insertion", progress=False)
    ckpt = PolicyCheckpoint.load(tmp_path / "models/rexl/detector_insertion.pt")
    assert (record["mode"], ckpt.mode, ckpt.perturbation) == ("insertion", "insertion", "blur")   # insertion's default
    assert not (tmp_path / "models/rexl/detector_deletion.pt").exists()      # each policy writes its own file only
    data["rexl"]["detector"][1] = {**DETECTOR_CELLS, "mode": "insertion", "options": {"bogus": 1}}
    with pytest.raises(ValueError, match=r"params rexl\.detector\[1\]\.options: unknown \['bogus'\]"):
        provide_policy(parse_params(data, check_files=False), "detector_insertion", progress=False)
    data["rexl"]["detector"][1] = {**DETECTOR_CELLS, "mode": "insertion",
                                   "features": {"kind": "detector_cells", "layers": [0], "pool": 2}}
    with pytest.raises(ValueError, match=r"^params rexl\.detector\[1\]\.features: unknown keys \['pool'\]"):
        provide_policy(parse_params(data, check_files=False), "detector_insertion", progress=False)
    data["rexl"]["detector"] = [DETECTOR_CELLS, DETECTOR_CELLS]
    with pytest.raises(ParamsError, match=r"rexl\.detector: more than one policy of mode \['deletion'\]"):
        parse_params(data, check_files=False)
    data["rexl"]["detector"] = []
    with pytest.raises(ParamsError, match=r"rexl\.detector: an empty list"):
        parse_params(data, check_files=False)


def test_the_stage_trains_a_policy_for_the_audited_classifier(trained):
    root, record, path = trained
    from explainers.rexl import PolicyCheckpoint

    ckpt = PolicyCheckpoint.load(path)
    assert record["source"] == "trained" and record["sha256"] and record["steps"] >= 32
    assert (ckpt.grid, ckpt.mode, ckpt.perturbation, ckpt.conditioning, ckpt.num_classes) == \
        (2, "deletion", "mean", "class", 4)
    assert record["auc_first"] is not None and record["episodes"] > 0 and "training scenes" in record["data"]
    assert not any((root / "checkpoints").glob("classifier-*"))     # finished: nothing left to resume


def test_a_killed_training_resumes_from_its_own_checkpoint(tmp_path, monkeypatch):
    """A checkpoint of the same configuration is resumed (its steps are not trained again); one of another
    configuration is not."""
    import tasks.rexl_train
    from tasks.rexl_stage import checkpoint_folder, provide_policy

    params = parse_params(params_dict(tmp_path), check_files=False)
    calls = []
    real = tasks.rexl_train.train_policy

    @functools.wraps(real)
    def crash_after_saving(*args, **kwargs):            # the first run: trained, its checkpoint saved, then killed
        calls.append(kwargs["checkpoint_dir"])
        real(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(tasks.rexl_train, "train_policy", crash_after_saving)
    with pytest.raises(KeyboardInterrupt):
        provide_policy(params, "classifier_deletion", progress=False)
    folder = checkpoint_folder(params, "classifier", params.rexl.classifier)
    assert calls == [folder] and (folder / "last.zip").is_file()
    other = parse_params(params_dict(tmp_path, seed=1), check_files=False)
    assert checkpoint_folder(other, "classifier", other.rexl.classifier) != folder
    monkeypatch.setattr(tasks.rexl_train, "train_policy", real)
    record = provide_policy(params, "classifier_deletion", progress=False)
    assert record["steps"] == 32 and record["episodes"] == 0        # resumed at 32 of 32 steps: nothing to train
    assert not folder.exists()


def test_the_stage_verifies_and_copies_a_given_policy(trained, tmp_path):
    from tasks.rexl_stage import provide_policy

    _, first, src = trained
    record = provide_policy(parse_params(params_dict(tmp_path, weights=src), check_files=False), "classifier_deletion")
    out = tmp_path / "models/rexl/classifier_deletion.pt"
    assert record["source"] == "copied" and out.read_bytes() == src.read_bytes()
    assert record["steps"] == first["steps"] and record["auc_last"] == first["auc_last"]   # the policy's own record


def test_the_stage_refuses_a_policy_for_other_weights_or_another_mode(trained, tmp_path):
    from tasks.rexl_stage import provide_policy

    other = policy_file(tmp_path, perturbation="mean")              # trained for a toy scorer's weights
    params = parse_params(params_dict(tmp_path, weights=other, grid=2), check_files=False)
    with pytest.raises(ValueError, match=r"params rexl\.classifier\.weights: .*tiny_mean.*trained for model weights"):
        provide_policy(params, "classifier_deletion")
    params = parse_params(params_dict(tmp_path, weights=trained[2], mode="insertion", perturbation="mean"),
                          check_files=False)
    with pytest.raises(ValueError, match=r"rexl\.classifier\.weights: .* another mode 'deletion' \(params "
                                         r"'insertion'\)"):
        provide_policy(params, "classifier_insertion")
    assert not (tmp_path / "models/rexl").exists() or not any((tmp_path / "models/rexl").iterdir())


def test_default_params_ship_the_classifier_policy_and_dvc_tracks_it():
    """params.yaml's rexl.classifier.weights is a shipped policy that passes the stage's checks for the demo
    classifier (models/classifier.pt is the models stage's copy of weights/demo/classifier.pt), and the stage's DVC
    deps list it (a new file re-runs the stage)."""
    from ruamel.yaml import YAML

    from tasks.params import load_params
    from tasks.rexl_stage import check_given

    params = load_params(REPO / "params.yaml", check_files=False)
    weights = params.rexl.policy("classifier").weights
    stage = YAML(typ="safe").load((REPO / "dvc.yaml").read_text())["stages"]["models_rexl"]
    assert weights and weights in stage["deps"]
    demo = params.infer.classifier.model_copy(update={"weights": str(DEMO / "classifier.pt")})
    params = params.model_copy(update={"infer": params.infer.model_copy(update={"classifier": demo})})
    ckpt = check_given(params, params.rexl.policies()["classifier_deletion"], REPO / weights)
    assert (ckpt.mode, ckpt.grid, ckpt.conditioning) == ("deletion", 7, "class")
    # weights: null trains the cell policy by MaskablePPO: its recipe is valid, and the policy it retrains is shipped
    from tasks.rexl_stage import cell_blocks, is_cells, train_options
    spec = params.rexl.policy("classifier")
    assert is_cells(spec) and cell_blocks("classifier", spec) == (2, 3) and train_options("classifier", spec)
    ppo = check_given(params, params.rexl.policies()["classifier_deletion"],
                      DEMO / "rexl_classifier_deletion_cells_ppo.pt")
    assert ppo.arch == "cells" and ppo.training["steps"] <= 200_000 and ppo.training["algorithm"].startswith("Mask")
    assert ppo.training["steps"] == spec.steps // (spec.n_envs * spec.grid ** 2) * spec.n_envs * spec.grid ** 2


def test_default_params_ship_the_detector_policies_and_dvc_tracks_them():
    """params.yaml's rexl.detector lists a deletion and an insertion policy, each a shipped box-conditioned cell policy
    that passes the stage's checks for the demo detector (models/detector.pt is the models stage's copy of
    weights/demo/detector.pt), DVC's deps list both, a job reads each, and their recipe (weights: null) is the one
    their training records state (tasks.rexl_boxes_ppo's settings), its keywords valid, within the issue's budget."""
    from ruamel.yaml import YAML

    from tasks.params import load_params
    from tasks.rexl_stage import check_given, detector_layers, is_detector_cells, train_options

    params = load_params(REPO / "params.yaml", check_files=False)
    stage = YAML(typ="safe").load((REPO / "dvc.yaml").read_text())["stages"]["models_rexl"]
    detectors = [d.model_copy(update={"weights": str(DEMO / "detector.pt")}) if d.id == params.explain_detector().id
                 else d for d in params.infer.detectors]
    params = params.model_copy(update={"infer": params.infer.model_copy(update={"detectors": detectors})})
    read = {str(j.options.get("policy")) for j in params.explain.jobs if j.targets == "detections"}
    for mode, perturbation in (("deletion", "mean"), ("insertion", "mean")):
        spec = params.rexl.policy("detector", mode)
        assert spec.weights and spec.weights in stage["deps"] and f"models/rexl/detector_{mode}.pt" in read
        ckpt = check_given(params, params.rexl.policies()[f"detector_{mode}"], REPO / spec.weights)
        assert (ckpt.mode, ckpt.grid, ckpt.conditioning, ckpt.arch, ckpt.perturbation) == \
            (mode, spec.grid, "box", "cells", perturbation)
        assert ckpt.training["algorithm"].startswith("MaskablePPO") and ckpt.training["images"] == spec.images
        options = train_options("detector", spec)
        for key in ("horizon", "gamma", "gae_lambda", "reward_scale", "shaping", "n_epochs", "batch_size",
                    "clip_range", "ent_coef", "width", "value_width"):
            assert ckpt.training[key] == options[key], key
        assert (ckpt.training["learning_rate"], ckpt.training["n_envs"], ckpt.training["seed"]) == \
            (spec.lr, spec.n_envs, spec.seed)
        assert ckpt.training["time_limit_s"] == spec.time_limit_s and spec.steps <= 200_000     # the budget
        assert ckpt.features["layers"] == list(detector_layers("detector", spec)) and is_detector_cells(spec)


def test_unknown_training_options_name_the_key(tmp_path):
    from tasks.rexl_stage import train_options

    params = parse_params(params_dict(tmp_path, options={"hiden": [8]}), check_files=False)
    with pytest.raises(ValueError, match=r"rexl\.classifier\.options: unknown \['hiden'\]"):
        train_options("classifier", params.rexl.classifier)


# ------------------------------------------------------------------------------------------------ explain jobs
def test_a_job_whose_policy_was_trained_for_other_weights_names_the_job_and_the_file(trained, tmp_path):
    other = policy_file(tmp_path, perturbation="mean")
    params = parse_params(params_dict(tmp_path, jobs=[RISE, rexl_job(other)]), check_files=False)
    with pytest.raises(ParamsError, match=rf"explain\.jobs\[1\]\.options\.policy \({other}\): .*trained for model "
                                          r"weights"):
        check_jobs(params)
    check_jobs(parse_params(params_dict(tmp_path, jobs=[rexl_job(trained[2])]), check_files=False))
    missing = parse_params(params_dict(tmp_path, jobs=[rexl_job(tmp_path / "none.pt")]), check_files=False)
    with pytest.raises(ParamsError, match=r"explain\.jobs\[0\]\.options\.policy: file not found"):
        check_jobs(missing)
    (tmp_path / "text.pt").write_text("not a policy")
    with pytest.raises(ParamsError, match=r"explain\.jobs\[0\]\.options\.policy \(.*text\.pt\): .*not a readable"):
        check_jobs(parse_params(params_dict(tmp_path, jobs=[rexl_job(tmp_path / "text.pt")]), check_files=False))
    unguarded = rexl_job(trained[2])
    unguarded["options"]["check_weights"] = False
    with pytest.raises(ParamsError, match=r"explain\.jobs\[0\]\.options\.check_weights: false"):
        check_jobs(parse_params(params_dict(tmp_path, jobs=[unguarded]), check_files=False))
    with pytest.raises(ParamsError, match=r"explain\.jobs\[0\]\.options\.policy: rexl is a learned explainer"):
        check_jobs(parse_params(params_dict(tmp_path, jobs=[{**rexl_job(""), "options": {}}]), check_files=False))


def test_the_stage_output_may_be_missing_before_the_stage_runs(tmp_path):
    """A job naming the models_rexl stage's own policy file passes check_jobs before that stage has run (make run,
    xai-audit audit); any other missing file does not."""
    stage_file = tmp_path / "models/rexl/classifier_deletion.pt"
    check_jobs(parse_params(params_dict(tmp_path, jobs=[rexl_job(stage_file)]), check_files=False))
    with pytest.raises(ParamsError, match="file not found"):
        check_jobs(parse_params(params_dict(tmp_path, jobs=[rexl_job(tmp_path / "models/rexl/x.pt")]),
                                check_files=False))


def test_the_policy_bytes_are_part_of_the_job_key_and_the_config_hash(trained, tmp_path, monkeypatch):
    """Same path, other bytes: the rexl job's result-store base and the explain config hash change; the other job's
    base does not."""
    from tasks.explain import job_bases

    path = tmp_path / "policy.pt"
    shutil.copyfile(trained[2], path)
    params = check_jobs(parse_params(params_dict(tmp_path, jobs=[RISE, rexl_job(path)]), check_files=False))
    before = job_bases(params)
    dump = json.dumps(params.explain.model_dump(mode="json"))
    policy_file(tmp_path, perturbation="mean").replace(path)
    after = job_bases(params)
    assert after["classes/rise"] == before["classes/rise"]
    assert after["classes/rexl"] != before["classes/rexl"]
    assert json.dumps(params.explain.model_dump(mode="json")) != dump
    assert "option_files_sha256" not in params.explain.jobs[0].model_dump()        # a job without file options


def test_explain_counts_the_policy_among_its_input_files(tmp_path):
    from flows.explain import _input_files

    path = tmp_path / "p.pt"
    params = parse_params(params_dict(tmp_path, jobs=[RISE, rexl_job(path), {**rexl_job(path), "targets": "persons"}]),
                          check_files=False)
    assert [f for f in _input_files(params) if f == path] == [path]


def test_audit_runs_the_stage_by_default_only_where_a_job_reads_its_policy(tmp_path):
    from flows.cli import build_parser, rexl_applies

    stage_file = tmp_path / "models/rexl/classifier_deletion.pt"
    assert rexl_applies(parse_params(params_dict(tmp_path, jobs=[rexl_job(stage_file)]), check_files=False))
    assert not rexl_applies(parse_params(params_dict(tmp_path, jobs=[RISE]), check_files=False))
    assert not rexl_applies(parse_params(params_dict(tmp_path, jobs=[rexl_job(tmp_path / "mine.pt")]),
                                         check_files=False))
    assert build_parser().parse_args(["rexl"]).command == "rexl"


# ------------------------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_a_rexl_job_runs_through_explain_and_evaluate(trained, trained_detector, in_tmp, prefect_server):
    """Pull -> infer -> parts (demo weights, 4 images) -> explain (rise + rexl on classes, rexl on pedestrians over
    grid cells) -> evaluate -> report: rexl rows with their exact forwards, evaluate's metrics, the sanity check
    (guard off on the randomised copies) and the report for them; a policy for other weights is refused by name; a
    new policy file recomputes that job's groups only."""
    from flows.evaluate import run_evaluate
    from flows.explain import run_explain
    from flows.infer import run_infer
    from flows.parts import run_parts
    from flows.pull import run_pull
    from flows.report import run_report

    import pyarrow.compute as pc

    from explainers.rexl import PolicyCheckpoint
    from tasks import stages
    from tasks.params import load_params

    policy = in_tmp / "policy.pt"
    shutil.copyfile(trained[2], policy)
    params_file = tiny_params(in_tmp, pull={"synthetic": {"n_images": 4}}, infer=INFER,
                              explain={"jobs": [{**RISE, "split": None}, {**rexl_job(policy), "split": None},
                                                {**rexl_job(trained_detector), "split": None, "targets": "persons",
                                                 "regions": "grid", "n_regions": 4}],
                                       "cache_dir": str(in_tmp / "store"), "min_height": 20},
                              evaluate={"steps": 2, "shard_size": 4, "causal_split": None,
                                        "sanity": {"targets": 1, "max_targets": 1}})
    for run in (run_pull, run_infer, run_parts):
        run(params_file)
    first = run_explain(params_file)
    assert first["errors"] == 0 and first["explanations"]["rexl"] == first["explanations"]["rise"] > 0
    params = load_params(params_file)
    rows = stages.explain(params).read("explanations")
    rexl = rows.filter(pc.equal(rows["job"], "rexl")).to_pylist()
    persons = rows.filter(pc.equal(rows["job"], "rexl@grid")).to_pylist()
    assert len(persons) == first["explanations"]["rexl@grid"] > 0
    for r in rexl + persons:                                        # 2 + T (k^2 - 1), T = the group's targets
        assert r["n_forward"] == 2 + r["shared_by"] * 3 and r["method"] == "rexl"
        assert json.loads(r["options"])["check_weights"] is True and len(r["saliency"]) == 48 * 64
    assert all(len(r["relevance"]) == len(r["region_names"]) == 4 for r in persons)
    result = run_evaluate(params_file)
    metrics = stages.evaluate(params).read("metrics")
    mine = metrics.filter(pc.equal(metrics["job"], "rexl"))
    assert mine.num_rows > 0 and {"deletion_auc", "insertion_auc"} <= set(mine["metric"].to_pylist())
    assert metrics.filter(pc.equal(metrics["job"], "rexl@grid")).num_rows > 0
    for job in ("rexl", "rexl@grid"):
        sanity = json.loads(Path(params.evaluate.metrics).read_text())["sanity"]["jobs"][job]
        assert sanity["status"] == "checked" and len(sanity["stages"]) > 1, result
        assert sanity["spearman_full"] is not None, job
    run_report(params_file)
    html = Path(params.report.out).read_text()
    assert html.count(">rexl<") >= 2                                 # in the jobs table and the method tables

    policy_file(in_tmp, perturbation="mean").replace(policy)        # other bytes, same path: the guard refuses them
    with pytest.raises(ParamsError, match=r"explain\.jobs\[1\]\.options\.policy"):
        run_explain(params_file)
    same = PolicyCheckpoint.load(trained[2])                        # the same weights, other bytes (its record)
    same.training = {**same.training, "note": "re-saved"}
    same.save(policy)
    again = run_explain(params_file)
    images = len({r["image_id"] for r in rexl})                     # one shared-forward group per image and job
    others = images + len({r["image_id"] for r in persons})         # rise, rexl@grid: unchanged
    assert (again["groups_computed"], again["groups_reused"]) == (images, others)


def test_the_stage_trains_a_cell_policy_with_ppo(tmp_path):
    """features {kind: cells}: the stage trains a CellPolicy by MaskablePPO (tasks.rexl_cells_ppo) for the demo
    classifier, which the explainer accepts; a cell policy for the detector, or unknown keys, are refused naming the
    key."""
    from explainers.rexl import PolicyCheckpoint, Rexl
    from tasks.rexl_stage import cell_blocks, guard_scorer, provide_policy

    cells = {"features": {"kind": "cells", "blocks": [2, 3]}, "options": {"width": 8, "value_width": 8}}
    params = parse_params(params_dict(tmp_path, **cells), check_files=False)
    record = provide_policy(params, "classifier_deletion", progress=False)
    assert record["features"] == "cells" and record["steps"] == 32 and record["algorithm"].startswith("MaskablePPO")
    ckpt = PolicyCheckpoint.load(tmp_path / "models/rexl/classifier_deletion.pt")
    assert ckpt.arch == "cells" and ckpt.width == 8 and ckpt.features["blocks"] == [2, 3]
    Rexl(guard_scorer(params, "classifier"), policy=ckpt)               # trained for the audited weights
    with pytest.raises(ValueError, match=r"rexl\.classifier\.features: unknown keys \['pool'\]"):
        cell_blocks("classifier", parse_params(params_dict(tmp_path, features={"kind": "cells", "pool": 2}),
                                               check_files=False).rexl.classifier)
    with pytest.raises(ValueError, match=r"rexl\.classifier\.features: blocks must be a list"):
        cell_blocks("classifier", parse_params(params_dict(tmp_path, features={"kind": "cells", "blocks": "2,3"}),
                                               check_files=False).rexl.classifier)
    with pytest.raises(ValueError, match=r"rexl\.detector\.features: kind 'cells' is a classifier's"):
        cell_blocks("detector", params.rexl.classifier)
    from tasks.rexl_stage import detector_layers
    with pytest.raises(ValueError, match=r"rexl\.classifier\.features: kind 'detector_cells' is a detector's"):
        detector_layers("classifier", params.rexl.classifier)
    boxes = parse_params(params_dict(tmp_path, features={"kind": "detector_cells", "layers": [0], "pool": 2}),
                         check_files=False).rexl.classifier
    with pytest.raises(ValueError, match=r"rexl\.detector\.features: unknown keys \['pool'\]"):
        detector_layers("detector", boxes)
    inserting = {"mode": "insertion", "perturbation": "mean"}                 # a detector's policy may insert
    insertion = parse_params(params_dict(tmp_path, features={"kind": "detector_cells"}, **inserting),
                             check_files=False).rexl.classifier
    assert detector_layers("detector", insertion) == (0, 1)
    with pytest.raises(ValueError, match=r"rexl\.classifier\.features: kind 'cells' is a classifier's deletion "
                                         r"policy, not the classifier's insertion"):
        cell_blocks("classifier", parse_params(params_dict(tmp_path, **cells, **inserting),
                                               check_files=False).rexl.classifier)
    with pytest.raises(ValueError, match=r"rexl\.classifier\.options: unknown \['hidden', 'init_sharpen'\]"):
        from tasks.rexl_stage import train_options
        train_options("classifier", parse_params(params_dict(tmp_path, **{**cells, "options": {
            "hidden": [8], "init_sharpen": 2.0}}), check_files=False).rexl.classifier)   # MLP / fine-tune keys
