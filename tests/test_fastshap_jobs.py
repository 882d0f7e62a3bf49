"""FastSHAP (``explainers.fastshap``) as explain jobs: ``fastshap@parts`` / ``fastshap_bayes@parts`` are checked
against the parts stage's players and their trained file before any work (tasks.explain_jobs), play a pedestrian's
parts in the trained order with missing parts as dummies (tasks.explain.explain_targets), and the report shows the
trained file's held-out check and the explainer forwards beside the model forwards (tasks.report)."""
from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from explainers.fastshap import player_names
from tasks.explain import explain_targets
from tasks.explain_jobs import check_jobs
from tasks.params import ExplainJob, ExplainParams, ParamsError, parse_params
from tasks.report import cost_table, learned_table
from tests.learned_fixture import HELDOUT, tiny_fastshap
from tests.rexl_fixture import SHA

PARTS10 = player_names("parts10")
H, W = 40, 24


def parts10_file(folder, perturbation: str = "blur"):
    """A parts10 + context network (untrained, seeded) saved under ``folder``, for scorers fingerprinted SHA."""
    ckpt = tiny_fastshap(len(PARTS10), perturbation)
    ckpt = dataclasses.replace(ckpt, grouping="parts10", players=PARTS10)
    return ckpt.save(folder / "parts10.pt")


class BodyScorer:
    """Score = mean brightness of the image's middle column band (one target), fingerprinted SHA."""

    device = torch.device("cpu")
    chunk_size = 8
    num_targets = 1
    weights_sha256 = SHA

    def __call__(self, images):
        return images[:, :, :, 8:16].mean((1, 2, 3))[:, None]


def body(names) -> dict[str, torch.Tensor]:
    """Disjoint horizontal bands, one per part name (a part left out has no pixel)."""
    out = {}
    for k, name in enumerate(names):
        m = torch.zeros(H, W, dtype=torch.bool)
        m[3 * k:3 * k + 3, 4:20] = True
        out[name] = m
    return out


def run(job: ExplainJob, parts: dict[str, torch.Tensor]):
    errors: list[dict] = []
    image = torch.rand(3, H, W, generator=torch.Generator().manual_seed(0))
    target = {"image_id": "img", "target_id": "p1", "kind": "persons", "parts_model": "gt", "parts_id": "a1"}
    rows = explain_targets(job, lambda group: BodyScorer(), image, [target], lambda t: parts, ExplainParams(),
                           0, "cpu", errors, "img.png")
    return rows, errors


@pytest.mark.parametrize("method, budget", [("fastshap", None), ("fastshap_bayes", 8)])
def test_a_fixed_player_job_lists_the_parts_with_a_pixel_in_trained_order(method, budget, tmp_path):
    weights = parts10_file(tmp_path)
    job = ExplainJob(method=method, targets="persons", regions="parts", budget=budget,
                     options={"weights": str(weights)})
    missing = {"left_lower_arm", "right_lower_leg"}                     # parts the keypoints did not place
    present = [n for n in PARTS10 if n not in missing]
    rows, errors = run(job, body(reversed(present)))                     # the parts table's order is not the players'
    assert errors == [] and len(rows) == 1
    row = rows[0]
    assert row["region_names"] == present and len(row["relevance"]) == len(present)
    assert sum(row["relevance"]) == pytest.approx(row["full_score"] - row["empty_score"], abs=1e-5)
    options = json.loads(row["options"])
    assert options["heldout"]["median_rel_l2"] == HELDOUT["median_rel_l2"] and options["n_explainer_forward"] == 1


def test_parts_of_another_grouping_and_a_pedestrian_without_parts_are_errors_rows(tmp_path):
    job = ExplainJob(method="fastshap", targets="persons", regions="parts", options={"weights": str(parts10_file(
        tmp_path))})
    rows, errors = run(job, body(player_names("parts4")))
    assert rows == [] and "body parts ['arms', 'legs'] are no players of the trained file" in errors[0]["message"]
    rows, errors = run(job, {})
    assert rows == [] and "no non-empty body part" in errors[0]["message"]
    wrong = body(PARTS10[:3])
    wrong["head"] = torch.ones(H, 1, dtype=torch.bool)                  # would broadcast into [H, W] silently
    rows, errors = run(job, wrong)
    assert rows == [] and "p1: body part 'head' mask (40, 1) does not match the image (40, 24)" in errors[0][
        "message"]


def _params(job: dict, **parts):
    return parse_params({"explain": {"jobs": [job]}, "parts": parts}, check_files=False)


def test_params_check_the_trained_file_option_and_the_players(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)                     # no audited model here: the guard waits for the explain flow
    weights = str(parts10_file(tmp_path))
    ok = {"method": "fastshap", "targets": "persons", "regions": "parts", "options": {"weights": weights}}
    assert check_jobs(_params(ok)).explain.jobs[0].options["weights"] == weights
    with pytest.raises(ParamsError, match=r"explain\.jobs\[0\]\.options\.weights: fastshap is a learned explainer: "
                                          r"give the file trained for the job's model \(models/fastshap/"):
        check_jobs(_params({**ok, "options": {}}))
    with pytest.raises(ParamsError, match=r"options\.weights: file not found \(got 'nowhere\.pt'\)"):
        check_jobs(_params({**ok, "options": {"weights": "nowhere.pt"}}))
    with pytest.raises(ParamsError, match=r"trained for the players \['head', .* but parts\.grouping 'parts4' with "
                                          r"parts\.context True gives \['head', 'torso', 'arms', 'legs', 'context'\]"):
        check_jobs(_params(ok, grouping="parts4"))
    with pytest.raises(ParamsError, match="parts.context False gives"):
        check_jobs(_params(ok, context=False))
    with pytest.raises(ParamsError, match="fastshap_bayes plays the body parts its trained file names: regions must "
                                          "be 'parts', got 'grid'"):
        check_jobs(_params({**ok, "method": "fastshap_bayes", "regions": "grid"}))
    with pytest.raises(ParamsError, match="check_weights: false would explain with a file trained for other weights"):
        check_jobs(_params({**ok, "options": {"weights": weights, "check_weights": False}}))


def test_the_file_a_models_stage_writes_may_be_missing_before_it_ran(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = parse_params({"fastshap": {"detector": {"weights": None}}}, check_files=False)
    written = params.fastshap.weights_file()
    job = {"method": "fastshap", "targets": "persons", "regions": "parts", "options": {"weights": str(written)}}
    check_jobs(parse_params({"fastshap": {"detector": {"weights": None}}, "explain": {"jobs": [job]}},
                            check_files=False))


def test_the_report_shows_explainer_forwards_and_the_held_out_check():
    base = {"kind": "persons", "n_forward": 2, "shared_by": 1, "device": "cpu"}
    rows = [{**base, "job": "fastshap@parts", "options": json.dumps({"n_explainer_forward": 1, "heldout": HELDOUT,
                                                                     "weights_sha256": "abc"})},
            {**base, "job": "bayes_shapley@parts", "n_forward": 48, "options": json.dumps({"budget": 48})}]
    explanations = pd.DataFrame(rows * 2)
    cost = cost_table(explanations).set_index("job")
    assert cost.loc["fastshap@parts", "explainer forwards / explanation"] == 1
    shared = pd.DataFrame([{**rows[0], "n_forward": 4, "shared_by": 3}] * 3)      # one call for 3 pedestrians
    per_image = cost_table(shared).set_index("job")
    assert per_image.loc["fastshap@parts", "explainer forwards / explanation"] == pytest.approx(1 / 3)
    assert per_image.loc["fastshap@parts", "forwards / explanation"] == pytest.approx(4 / 3)
    assert cost.loc["bayes_shapley@parts", "explainer forwards / explanation"] == 0
    assert cost.loc["bayes_shapley@parts", "forwards / explanation"] == 48
    learned = learned_table(explanations)
    assert learned["job"].tolist() == ["fastshap@parts"]
    assert learned.iloc[0]["median rel. L2 error"] == HELDOUT["median_rel_l2"]
    assert learned.iloc[0]["held-out persons"] == HELDOUT["persons"] and learned.iloc[0]["trained file"] == "abc"


def test_a_report_parses_each_rows_options_once(tmp_path, monkeypatch):
    """The cost and learned tables of a report share one parse of the explanations' options (one json.loads per
    row, not one per table); given options must be one per row."""
    from tasks.report import build_report
    from tests.report_fixture import report_inputs

    inputs = report_inputs(tmp_path)
    e = inputs.explanations
    learned_row = {"n_explainer_forward": 1, "heldout": HELDOUT, "weights_sha256": "abc"}
    texts = [json.dumps({**(learned_row if job.startswith("bayes_shapley") else {"budget": 1}), "row": i})
             for i, job in enumerate(e["job"])]
    inputs = dataclasses.replace(inputs, explanations=e.assign(options=texts))
    parsed, loads = [], json.loads
    monkeypatch.setattr(json, "loads", lambda text, *a, **kw: (parsed.append(text) if text in texts else None,
                                                                loads(text, *a, **kw))[1])
    _, md = build_report(inputs, per_row=0)
    assert sorted(parsed) == sorted(texts) and "held-out check" in md
    options = inputs.explanation_options()
    assert len(parsed) == len(texts) and [o["row"] for o in options] == list(range(len(texts)))
    explanations = inputs.explanations
    assert cost_table(explanations, options).equals(cost_table(explanations))
    assert learned_table(explanations, options).equals(learned_table(explanations))
    learned = learned_table(explanations, options)
    assert len(learned) >= 1 and learned["trained file"].tolist() == ["abc"] * len(learned)
    with pytest.raises(ValueError, match="report: 1 parsed options for .* explanation rows"):
        cost_table(explanations, options[:1])
    inputs.explanations = explanations.iloc[:2]                 # another frame: parsed again
    assert [o["row"] for o in inputs.explanation_options()] == [0, 1]


def test_before_the_stages_run_the_file_they_rewrite_is_not_judged(tmp_path, monkeypatch):
    """A stale models/fastshap/detector_parts.pt (parts10) with parts.grouping changed to parts6 and weights: null:
    the models_fastshap stage retrains it first, so the check before the pipeline lets it pass; the explain flow's
    check (after the stage) refuses a file that still does not fit."""
    monkeypatch.chdir(tmp_path)
    data = {"fastshap": {"detector": {"weights": None}}, "parts": {"grouping": "parts6"}}
    written = parse_params(data, check_files=False).fastshap.weights_file()
    stale = parts10_file(tmp_path)
    written.parent.mkdir(parents=True)
    stale.replace(written)
    job = {"method": "fastshap", "targets": "persons", "regions": "parts", "options": {"weights": str(written)}}
    params = parse_params({**data, "explain": {"jobs": [job]}}, check_files=False)
    check_jobs(params, before_stages=True)
    with pytest.raises(ParamsError, match="trained for the players"):
        check_jobs(params)


def test_a_file_trained_on_other_detector_settings_is_refused(tmp_path, monkeypatch):
    from tasks.fastshap_data import detector_game

    monkeypatch.chdir(tmp_path)
    base = parse_params({}, check_files=False)
    ckpt = tiny_fastshap(len(PARTS10), "blur")
    game = detector_game(base.explain_detector())
    ckpt = dataclasses.replace(ckpt, grouping="parts10", players=PARTS10, training={"detector": game})
    weights = str(ckpt.save(tmp_path / "game.pt"))
    job = {"method": "fastshap", "targets": "persons", "regions": "parts", "options": {"weights": weights}}
    check_jobs(parse_params({"explain": {"jobs": [job]}}, check_files=False))
    detectors = [{**base.infer.detectors[0].model_dump(), "imgsz": 640}]
    with pytest.raises(ParamsError, match=r"trained on the game of a detector with imgsz=320, but infer\.detectors "
                                          r"'demo-yolo' has imgsz=640"):
        check_jobs(parse_params({"explain": {"jobs": [job]}, "infer": {"detectors": detectors}}, check_files=False))


def test_weights_that_do_not_fit_their_network_are_refused_naming_the_file(tmp_path):
    from explainers.fastshap import FastShapCheckpoint

    small = tiny_fastshap(5, "blur")
    bad = dataclasses.replace(tiny_fastshap(len(PARTS10), "blur"), players=PARTS10, state_dict=small.state_dict)
    path = bad.save(tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=rf"fastshap weights: {path}: the weights do not fit its network \(Error"):
        FastShapCheckpoint.load(path)


def test_the_fingerprint_is_reused_only_while_the_weights_are_unchanged():
    from explainers.trained import tensors_sha256, weights_fingerprint

    class Scorer:
        model = torch.nn.Linear(3, 2)

    scorer = Scorer()
    first = weights_fingerprint(scorer)
    assert weights_fingerprint(scorer) == first == tensors_sha256(scorer.model.state_dict())
    with torch.no_grad():
        scorer.model.weight.add_(1.0)                  # an in-place change (an optimiser step)
    assert weights_fingerprint(scorer) == tensors_sha256(scorer.model.state_dict()) != first
    scorer.model.load_state_dict({k: torch.zeros_like(v) for k, v in scorer.model.state_dict().items()})
    assert weights_fingerprint(scorer) == tensors_sha256(scorer.model.state_dict())


class BodyScorers(BodyScorer):
    """BodyScorer for the targets ``ids``, target p<k>'s score scaled by k (so a mixed-up column shows)."""

    def __init__(self, ids: list[str]):
        self.num_targets = len(ids)
        self.scales = torch.tensor([float(i[1:]) for i in ids])

    def __call__(self, images):
        return super().__call__(images) * self.scales


def test_a_fastshap_job_explains_an_images_pedestrians_in_one_call(tmp_path):
    """One group per image (tasks.explain.job_groups): the pedestrians with parts share the unperturbed image's
    forward (n_forward 1 + T, shared_by T), each plays its own parts; one without parts is an errors row."""
    from tasks.explain import job_groups, shares_forwards

    job = ExplainJob(method="fastshap", targets="persons", regions="parts", options={"weights": str(parts10_file(
        tmp_path))})
    assert shares_forwards(job) and not shares_forwards(job.model_copy(update={"method": "bayes_shapley"}))
    people = {"p1": body(PARTS10[:4]), "p2": {}, "p3": body(PARTS10[2:9])}
    targets = [{"image_id": "img", "target_id": t, "kind": "persons", "parts_model": "gt", "parts_id": t}
               for t in people]
    item = {"image": {"image_id": "img", "split": "val"}, "targets": targets, "parts": []}
    assert [len(g) for _, g in job_groups(item, SimpleNamespace(explain=SimpleNamespace(jobs=[job])))] == [3]
    built = []
    errors: list[dict] = []
    image = torch.rand(3, H, W, generator=torch.Generator().manual_seed(0))
    rows = explain_targets(job, lambda group: built.append(len(group)) or BodyScorers([t["target_id"] for t in group]),
                           image, targets, lambda t: people[t["target_id"]], ExplainParams(), 0, "cpu", errors,
                           "img.png")
    assert [r["target_id"] for r in rows] == ["p1", "p3"] and built[-1] == 2
    assert [e["message"] for e in errors] == ["fastshap@parts p2: no non-empty body part"]
    assert all(r["n_forward"] == 3 and r["shared_by"] == 2 for r in rows)
    assert rows[0]["region_names"] == list(PARTS10[:4]) and rows[1]["region_names"] == list(PARTS10[2:9])
    for r in rows:
        assert sum(r["relevance"]) == pytest.approx(r["full_score"] - r["empty_score"], abs=1e-5)
    for r in rows:                       # each row is its own pedestrian's game: one explain call of that target
        alone = explain_targets(job, lambda group: BodyScorers([g["target_id"] for g in group]), image,
                                [t for t in targets if t["target_id"] == r["target_id"]],
                                lambda t: people[t["target_id"]], ExplainParams(), 0, "cpu", [], "img.png")[0]
        assert alone["n_forward"] == 2 and alone["region_names"] == r["region_names"]
        assert (alone["full_score"], alone["empty_score"]) == pytest.approx((r["full_score"], r["empty_score"]),
                                                                            abs=1e-6)
        assert alone["relevance"] == pytest.approx(r["relevance"], abs=1e-5)
