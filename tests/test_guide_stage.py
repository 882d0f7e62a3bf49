"""The guide stage's declarations and glue (tasks.guide): outputs declared once and matching dvc.yaml, the re-audit's
params (own model id, everything under data/guide), the guide params' validation, the held-out probe."""
import numpy as np
import pytest
import torch
import yaml

from detection.datasets.synthetic import SyntheticConfig
from detection.guidance_data import SceneSet, paired_probe
from tasks.guide import MIN_PER_ARM, guide, guided_spec, heldout_sets, probe_measures
from tasks.params import ParamsError, load_params, parse_params
from tests.conftest import REPO


def _paths(entries):
    return [next(iter(e)) if isinstance(e, dict) else e for e in entries or []]


def test_dvc_yaml_guide_stage_outputs_are_the_declared_ones():
    params = load_params(REPO / "params.yaml")
    declared = guide(params)
    entry = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["guide"]
    assert [str(p) for p in declared.dvc_outs()] == _paths(entry["outs"])
    assert [str(p) for p in declared.dvc_metrics()] == _paths(entry["metrics"])
    assert entry["cmd"] == "xai-audit guide"


def test_the_reaudit_writes_under_out_dir_with_its_own_model_id():
    params = load_params(REPO / "params.yaml")
    out = guide(params)
    audit = out.audit_params(params)
    assert audit.infer.classifier.id == params.guide.model_id != params.infer.classifier.id
    assert audit.infer.classifier.weights == params.guide.model and audit.infer.pose is None
    assert audit.infer.detectors == params.infer.detectors
    for path in (audit.infer.out_dir, audit.infer.metrics, audit.explain.out_dir, audit.explain.metrics,
                 audit.evaluate.out_dir, audit.evaluate.metrics, audit.evaluate.plots_dir):
        assert str(path).startswith(params.guide.out_dir + "/"), path
    assert audit.explain.jobs and all(j.targets == "classes" for j in audit.explain.jobs)
    assert audit.pull == params.pull and audit.parts == params.parts
    same = params.model_copy(update={"guide": params.guide.model_copy(update={"model_id": params.infer.classifier.id})})
    with pytest.raises(ValueError, match="its own"):
        guided_spec(same)
    no_jobs = params.model_copy(update={"explain": params.explain.model_copy(update={"jobs": []})})
    with pytest.raises(ValueError, match="classes"):
        out.audit_params(no_jobs)


@pytest.mark.parametrize("guide, message", [
    ({"attribution": "grad_cam", "layer": None}, "grad_cam"),
    ({"fraction": 0}, "guide.fraction"),
    ({"loss": "dice"}, "guide.loss"),
    ({"lamda": 1.0}, "guide.lamda: unknown key"),
])
def test_guide_params_errors_name_the_key(guide, message):
    with pytest.raises(ParamsError, match=message):
        parse_params({"guide": guide}, check_files=False)


def test_guide_classes_are_mapped_to_the_classifier_and_checked():
    from tasks.guide import training_config

    params = parse_params({"guide": {"classes": ["bicycle"]}}, check_files=False)
    assert training_config(params, ["person", "bicycle"]).classes == (1,)
    with pytest.raises(ValueError, match="guide.classes"):
        training_config(params, ["person", "car"])


def test_heldout_seeds_must_differ_from_the_audit_and_training_seeds():
    params = parse_params({"guide": {"probe": {"seed": 1}}}, check_files=False)
    with pytest.raises(ValueError, match="held-out seeds"):
        heldout_sets(params, ["person", "bicycle", "car", "pole"])
    few = parse_params({"guide": {"probe": {"n_scenes": 20}}}, check_files=False)
    with pytest.raises(ValueError, match=f"at least {MIN_PER_ARM}"):
        heldout_sets(few, ["person", "bicycle", "car", "pole"])


class _TintReader:
    """A 'classifier' whose P(bicycle) is the mean red-minus-blue of the image: it reads the orange tint."""

    class_names = ["person", "bicycle"]

    def classify(self, x):
        p = (x[:, 0] - x[:, 2]).mean((1, 2)).clamp(0, 1)
        return torch.stack([torch.zeros_like(p), p], 1)


def test_paired_probe_arms_differ_by_the_tint_alone_and_are_measured_with_intervals():
    cfg = SyntheticConfig(width=64, height=48)
    cue, none = paired_probe(cfg, 9002, range(12), ["person", "bicycle"])
    assert len(cue) == len(none) > 0 and cue.spurious.all() and not none.spurious.any()
    assert not cue.labels[:, 1].any() and torch.equal(cue.labels, none.labels)
    assert [i.rsplit("-", 1)[0] for i in cue.ids] == [i.rsplit("-", 1)[0] for i in none.ids]
    differs = (cue.images != none.images).any(1)
    assert differs.any() and not differs.all()                       # the background changes, objects do not
    m = probe_measures(_TintReader(), cue, none, "bicycle", seed=0)
    assert m["images_with_cue"] == m["images_without_cue"] == len(cue)
    assert m["p_bicycle_absent_with_cue"] == pytest.approx(m["with_cue"]["mean"])
    assert m["with_cue"]["mean"] > m["without_cue"]["mean"] and m["difference"]["low"] > 0
    assert m["with_cue"]["low"] <= m["with_cue"]["mean"] <= m["with_cue"]["high"]


def test_scene_set_subset_and_rows():
    s = SceneSet(torch.zeros(3, 3, 2, 2, dtype=torch.uint8), torch.tensor([[1, 0], [0, 1], [1, 1]]).bool(),
                 np.array([True, False, True]), [(np.zeros(0, np.int64), np.zeros((0, 4), np.float32))] * 3,
                 ["a", "b", "c"], [["x"], ["y"], ["x", "y"]], ["x", "y"])
    sub = s.subset(np.array([False, True, True]))
    assert sub.ids == ["b", "c"] and len(sub) == 2 and sub.rows()[1] == {"image_id": "c", "labels": ["x", "y"],
                                                                          "spurious_cue": True, "split": "val"}


def _shipped_guided(folder, params, **record_changes):
    """A folder like weights/demo holding a 'guided' classifier (the demo classifier's bytes) and a manifest whose
    training record says it was fine-tuned from ``params``' classifier with ``params``' recipe (then changed)."""
    import json
    import shutil
    from dataclasses import asdict

    from detection.models.specs import file_sha256
    from tasks.guide import training_config, training_data_record
    from tasks.shipped_weights import write_manifest

    src = REPO / "weights/demo/classifier.pt"
    shutil.copyfile(src, folder / "guided.pt")
    shutil.copyfile(src.with_suffix(".json"), folder / "guided.json")
    classes = json.loads(src.with_suffix(".json").read_text())["classes"]
    config = {k: v for k, v in asdict(training_config(params, classes)).items() if k != "progress"}
    record = {"source": "trained", "from_sha256": file_sha256(params.infer.classifier.weights), "config": config,
              "seed": params.guide.seed, "train_data": training_data_record(params)}
    for key, value in record_changes.items():
        if key in config:
            record["config"][key] = value
        else:
            record[key] = value
    (folder / "metrics").mkdir()
    (folder / "metrics/guided.json").write_text(json.dumps(record))
    write_manifest(folder)
    return folder / "guided.pt"


def _demo_params():
    params = load_params(REPO / "params.yaml")
    clf = params.infer.classifier.model_copy(update={"weights": str(REPO / "weights/demo/classifier.pt")})
    return params.model_copy(update={"infer": params.infer.model_copy(update={"classifier": clf})})


def test_given_guided_weights_must_be_the_fine_tune_of_this_classifier_with_this_recipe(tmp_path):
    from tasks.guide import check_given_guided
    from tasks.shipped_weights import WeightsMismatchError

    params = _demo_params()
    assert check_given_guided(params, _shipped_guided(tmp_path, params))["from_sha256"]
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(ValueError, match="fine-tuned from classifier weights with SHA-256 0000"):
        check_given_guided(params, _shipped_guided(other, params, from_sha256="0" * 64))
    recipe = tmp_path / "recipe"
    recipe.mkdir()
    with pytest.raises(ValueError, match=r"another recipe \(lam differ"):
        check_given_guided(params, _shipped_guided(recipe, params, lam=params.guide.lam + 1))
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    more = params.model_copy(update={"models": params.models.model_copy(update={
        "train_data": params.models.train_data.model_copy(update={"n_images": 100})})})
    with pytest.raises(ValueError, match="training scenes"):
        check_given_guided(more, _shipped_guided(scenes, params))
    (recipe / "guided.pt").write_bytes(b"not the shipped file")
    with pytest.raises(WeightsMismatchError, match="guide.weights"):
        check_given_guided(params, recipe / "guided.pt")
    with pytest.raises(FileNotFoundError, match="guide.weights"):
        check_given_guided(params, tmp_path / "missing.pt")


def test_the_reaudit_leaves_out_jobs_that_read_a_trained_file(tmp_path):
    """A rexl job's policy was trained for the original classifier (its guard refuses it for the guided one): the
    default re-audit leaves such jobs out, whether the file exists yet or not; guide.audit_jobs still decides."""
    from tasks.params import ExplainJob

    params = load_params(REPO / "params.yaml")
    policy = tmp_path / "classifier_deletion.pt"
    policy.write_bytes(b"policy")
    rise = ExplainJob.model_validate({"method": "rise", "targets": "classes", "regions": "none", "budget": 8})
    rexl = [ExplainJob.model_validate({"method": "rexl", "targets": "classes", "regions": "none",
                                       "options": {"policy": str(path)}})
            for path in (policy, tmp_path / "not_trained_yet.pt")]
    with_rexl = params.model_copy(update={"explain": params.explain.model_copy(update={"jobs": [rise, *rexl]}),
                                          "guide": params.guide.model_copy(update={"audit_jobs": None})})
    assert [j.method for j in guide(params).audit_params(with_rexl).explain.jobs] == ["rise"]
    only_rexl = with_rexl.model_copy(update={"explain": params.explain.model_copy(update={"jobs": rexl})})
    with pytest.raises(ValueError, match="trained-file option"):
        guide(params).audit_params(only_rexl)
    chosen = with_rexl.model_copy(update={"guide": params.guide.model_copy(update={"audit_jobs": rexl[:1]})})
    assert guide(params).audit_params(chosen).explain.jobs == rexl[:1]
