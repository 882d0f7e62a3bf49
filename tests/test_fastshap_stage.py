"""The models_fastshap stage (tasks.fastshap_stage): a given FastShapParts weights file is verified and copied (the
shipped one for the demo detector), a file trained for other detector weights, another grouping or perturbation, or
whose bytes differ from its manifest is refused naming the key; with weights null the stage trains on the training
scenes (seeded: the same network on a rerun, whose coalitions come from the cache), and `audit` runs the stage by
default only where an explain job names the file it writes.

The audited detector is the shipped demo detector (weights/demo); training is tiny (parts4: 5 players, a few
training pedestrians, 2 epochs, one held-out pedestrian: 32 forwards)."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from explainers.fastshap import FastShapCheckpoint, player_names
from tasks.params import parse_params
from tests.conftest import REPO

DEMO = REPO / "weights/demo"
SHIPPED = DEMO / "fastshap_parts.pt"
INFER = {"detectors": [{"id": "demo-yolo", "kind": "yolo", "weights": str(DEMO / "detector.pt"), "imgsz": 320,
                        "conf": 0.25, "iou": 0.5}], "pose": None, "classifier": None}
TINY = {"scenes": 8, "heldout_scenes": 3, "persons": 4, "heldout_persons": 1, "epochs": 2, "pairs": 4,
        "min_height": 40}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def params_dict(root: Path, weights=None, grouping: str = "parts10", jobs=(), **net) -> dict:
    return {"infer": INFER, "parts": {"grouping": grouping},
            "explain": {"jobs": list(jobs), "cache_dir": str(root / "store")},
            "fastshap": {"out_dir": str(root / "models/fastshap"), "metrics": str(root / "metrics/fastshap.json"),
                         "cache_dir": str(root / "cache"),
                         "detector": {**TINY, **net, "weights": None if weights is None else str(weights)}}}


def params_of(root: Path, **kw):
    return parse_params(params_dict(root, **kw), check_files=False)


def fastshap_job(weights) -> dict:
    return {"method": "fastshap", "targets": "persons", "regions": "parts", "options": {"weights": str(weights)}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The stage's training path on the demo detector: (root, params, metrics record, weights file)."""
    from tasks.fastshap_stage import provide_weights

    root = tmp_path_factory.mktemp("fastshap_stage")
    torch.set_num_threads(1)
    params = params_of(root, grouping="parts4")
    record = provide_weights(params, progress=False)
    return root, params, record, root / "models/fastshap/detector_parts.pt"


# ------------------------------------------------------------------------------------------------ given weights
def test_the_stage_verifies_and_copies_the_shipped_weights(tmp_path):
    from tasks.fastshap_stage import provide_weights, write_metrics

    params = params_of(tmp_path, weights=SHIPPED)
    record = provide_weights(params)
    out = params.fastshap.weights_file()
    assert out == (tmp_path / "models/fastshap/detector_parts.pt").resolve()
    assert out.read_bytes() == SHIPPED.read_bytes()
    ckpt = FastShapCheckpoint.load(SHIPPED)
    assert record["source"] == "copied" and record["weights"] == str(SHIPPED)
    assert record["players"] == list(player_names("parts10", True)) and record["grouping"] == "parts10"
    assert record["model_sha256"] == ckpt.model_sha256[:12] and record["weights_sha256_12"] == ckpt.digest()
    assert (record["train_persons"], record["heldout_persons"]) == (360, 6)      # the file's own records
    assert record["heldout_median_rel_l2"] == ckpt.heldout["median_rel_l2"]
    write_metrics(params.fastshap.metrics, {"detector": record})
    assert json.loads(Path(params.fastshap.metrics).read_text())["detector"]["sha256"] == record["sha256"]


def test_a_file_trained_for_other_detector_weights_is_refused_naming_the_key(tmp_path):
    from tasks.fastshap_stage import provide_weights

    other = dataclasses.replace(FastShapCheckpoint.load(SHIPPED), model_sha256="0" * 64)
    path = other.save(tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"params fastshap\.detector\.weights: .*other\.pt.*trained for model weights "
                                         r"000000000000"):
        provide_weights(params_of(tmp_path, weights=path))
    assert not (tmp_path / "models/fastshap/detector_parts.pt").exists()


def test_another_grouping_or_perturbation_is_refused(tmp_path):
    from tasks.fastshap_stage import provide_weights

    with pytest.raises(ValueError, match=r"params fastshap\.detector\.weights: .*fastshap_parts\.pt was trained for "
                                         r"grouping 'parts10'.*parts\.grouping 'parts4'"):
        provide_weights(params_of(tmp_path, weights=SHIPPED, grouping="parts4"))
    with pytest.raises(ValueError, match=r"fastshap\.detector\.weights: .*perturbation 'blur\(.*fastshap\.detector\."
                                         r"perturbation gives 'mean"):
        provide_weights(params_of(tmp_path, weights=SHIPPED, perturbation="mean"))
    assert not (tmp_path / "models/fastshap").exists()


def test_a_file_that_is_not_its_manifest_s_is_refused(tmp_path):
    from tasks.fastshap_stage import provide_weights
    from tasks.shipped_weights import WeightsMismatchError

    folder = tmp_path / "shipped"
    folder.mkdir()
    shutil.copyfile(SHIPPED, folder / SHIPPED.name)
    (folder / "manifest.json").write_text(json.dumps({"files": {SHIPPED.name: {"sha256": "f" * 64, "bytes": 1}}}))
    with pytest.raises(WeightsMismatchError, match=r"params fastshap\.detector\.weights: .*not the shipped file"):
        provide_weights(params_of(tmp_path, weights=folder / SHIPPED.name))
    (folder / "broken.pt").write_text("not a weights file")
    with pytest.raises(ValueError, match=r"params fastshap\.detector\.weights: .*broken\.pt"):
        provide_weights(params_of(tmp_path, weights=folder / "broken.pt"))


def test_default_params_ship_the_weights_and_dvc_tracks_them():
    """params.yaml's fastshap.detector.weights is the shipped file, it passes the stage's checks for the demo detector
    (models/detector.pt is the models stage's copy of weights/demo/detector.pt), and the stage's DVC deps list it."""
    from ruamel.yaml import YAML

    from tasks.fastshap_stage import check_given
    from tasks.params import load_params

    params = load_params(REPO / "params.yaml", check_files=False)
    weights = params.fastshap.detector.weights
    stage = YAML(typ="safe").load((REPO / "dvc.yaml").read_text())["stages"]["models_fastshap"]
    assert weights == "weights/demo/fastshap_parts.pt" and weights in stage["deps"]
    assert stage["outs"] == [params.fastshap.out_dir] and "fastshap" in stage["params"]
    spec = params.explain_detector().model_copy(update={"weights": str(DEMO / "detector.pt")})
    infer = params.infer.model_copy(update={"detectors": [spec if d.id == spec.id else d
                                                          for d in params.infer.detectors]})
    ckpt = check_given(params.model_copy(update={"infer": infer}), REPO / weights)
    assert ckpt.grouping == params.parts.grouping and ckpt.training["scenes"] == [0, 900]


# ------------------------------------------------------------------------------------------------ training
def test_the_stage_trains_a_network_for_the_audited_detector(trained):
    from tasks.fastshap_stage import cache_folders

    root, params, record, path = trained
    ckpt = FastShapCheckpoint.load(path)
    assert record["source"] == "trained" and record["sha256"] and record["weights_sha256_12"] == ckpt.digest()
    assert ckpt.players == player_names("parts4", True) and ckpt.perturbation.startswith("blur")
    assert ckpt.training["scenes"] == [0, 5] and ckpt.heldout["scenes"] == [5, 8]
    assert record["train_persons"] >= 1 and record["heldout_persons"] == 1 and record["train_model_forwards"] > 0
    coalitions, state = cache_folders(params, params.fastshap.detector)
    assert any(coalitions.glob("block-*.parquet")) and not state.exists()   # finished: nothing left to resume


def test_a_rerun_gives_the_same_network_from_the_coalition_cache(trained, monkeypatch):
    """Seeded: the same weights again; the coalitions' game values are read from the cache, not evaluated again."""
    import tasks.fastshap_data
    from tasks.fastshap_stage import provide_weights

    root, params, first, path = trained
    evaluated = []
    real = tasks.fastshap_data.person_rows
    monkeypatch.setattr(tasks.fastshap_data, "person_rows", lambda *a, **k: evaluated.append(a[0]) or real(*a, **k))
    path.unlink()
    again = provide_weights(params, progress=False)
    assert again["weights_sha256_12"] == first["weights_sha256_12"] and evaluated == []
    assert again["train_persons"] == first["train_persons"]


def test_a_killed_training_resumes_from_its_own_state(trained, tmp_path, monkeypatch):
    """Killed after its last epoch was saved (``last.pt``): the rerun resumes there (no training step again) and
    writes the network an uninterrupted run writes; the state folder is removed once finished."""
    import tasks.fastshap_train
    from tasks.fastshap_stage import cache_folders, provide_weights

    params = params_of(tmp_path, grouping="parts4")
    real = tasks.fastshap_train.train_network

    def killed_after_training(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(tasks.fastshap_train, "train_network", killed_after_training)
    with pytest.raises(KeyboardInterrupt):
        provide_weights(params, progress=False)
    state = cache_folders(params, params.fastshap.detector)[1]
    assert (state / "last.pt").is_file()
    monkeypatch.setattr(tasks.fastshap_train, "train_network", real)
    losses = []
    loss = tasks.fastshap_train.fastshap_loss
    monkeypatch.setattr(tasks.fastshap_train, "fastshap_loss", lambda *a: losses.append(1) or loss(*a))
    record = provide_weights(params, progress=False)
    assert losses == [] and record["weights_sha256_12"] == trained[2]["weights_sha256_12"] and not state.exists()


def test_cache_folders_separate_configurations(tmp_path):
    """Other epochs train in another state folder but reuse the coalitions; other pairs or another detector do
    not."""
    from tasks.fastshap_stage import cache_folders

    base = params_of(tmp_path, grouping="parts4")
    coal, state = cache_folders(base, base.fastshap.detector)
    more = params_of(tmp_path, grouping="parts4", epochs=3, persons=6)
    assert cache_folders(more, more.fastshap.detector) == (coal, cache_folders(more, more.fastshap.detector)[1])
    assert cache_folders(more, more.fastshap.detector)[1] != state
    pairs = params_of(tmp_path, grouping="parts4", pairs=5)
    assert cache_folders(pairs, pairs.fastshap.detector)[0] != coal
    data = params_dict(tmp_path, grouping="parts4")
    data["infer"] = {**INFER, "detectors": [{**INFER["detectors"][0], "conf": 0.3}]}
    other = parse_params(data, check_files=False)
    assert cache_folders(other, other.fastshap.detector)[0] != coal


def test_training_without_the_context_player_names_the_key(tmp_path):
    from tasks.fastshap_stage import provide_weights

    data = params_dict(tmp_path, grouping="parts4")
    data["parts"]["context"] = False
    with pytest.raises(ValueError, match=r"params parts\.context: false"):
        provide_weights(parse_params(data, check_files=False), progress=False)


# ------------------------------------------------------------------------------------------------ audit stages
def write_params(root: Path, weights: Path | None) -> str:
    import yaml

    data = params_dict(root, weights=SHIPPED)
    data["explain"]["jobs"] = [] if weights is None else [fastshap_job(weights)]
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_audit_runs_fastshap_by_default_only_where_a_job_reads_the_stage_file(tmp_path):
    import flows.audit as audit
    from flows.cli import build_parser, default_stages

    stages = list(audit.STAGES)
    assert stages.index("rexl") < stages.index("fastshap") < stages.index("infer") < stages.index("explain")
    with_job = default_stages(write_params(tmp_path, tmp_path / "models/fastshap/detector_parts.pt"))
    assert "fastshap" in with_job and with_job.index("fastshap") < with_job.index("explain")
    assert "fastshap" not in default_stages(write_params(tmp_path, None))
    assert "fastshap" not in default_stages(write_params(tmp_path, SHIPPED))      # a job reading its own file
    parser = build_parser()
    assert parser.parse_args(["audit", "--stage", "fastshap"]).stages == ["fastshap"]
    assert parser.parse_args(["fastshap"]).command == "fastshap"


def test_the_fastshap_stage_runs_flows_fastshap(monkeypatch):
    import flows.audit as audit
    import flows.fastshap

    calls = []
    monkeypatch.setattr(flows.fastshap, "run_fastshap", lambda f: calls.append(f) or {"fastshap": "done"})
    assert audit._run_stage("fastshap", "my.yaml") == {"fastshap": "done"} and calls == ["my.yaml"]
