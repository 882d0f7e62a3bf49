"""Adebayo's cascading randomisation (explainers/sanity.py): the copy is randomised, never the model; a gradient
method's maps decorrelate as the layers are randomised, a map that ignores the model does not."""
from __future__ import annotations

import torch
from torch import nn

from detection.models.classifier import ImageClassifier
from detection.scorers import ClassifierScorer
from explainers.base import Explainer
from explainers.gradients import InputXGradient, IntegratedGradients
from explainers.sanity import cascade, cascading_randomisation, parameter_layers, rank_correlation


def trained_net() -> nn.Module:
    """A small CNN trained for a few steps to tell a bright top-left square from a bright bottom-right one."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 2))
    x = torch.rand(64, 3, 16, 16) * 0.3
    y = torch.arange(64) % 2
    x[y == 0, :, :6, :6] += 0.7
    x[y == 1, :, 10:, 10:] += 0.7
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return net.eval()


class ImageItself(Explainer):
    """A 'method' that ignores the model: the image's brightness (the paper's edge-detector failure mode)."""

    name = "image_itself"

    def _explain(self, image, regions, budget, generator):
        self.score(image[None])
        T = self.scorer.num_targets
        return image.mean(0, keepdim=True).expand(T, -1, -1).clone(), None, {}


def test_cascade_and_rank_correlation():
    assert cascade(7, 3) == [0, 2, 5, 7] and cascade(2, 5) == [0, 1, 2]
    a = torch.arange(16.0)
    assert rank_correlation(a, a ** 3) == 1.0 and rank_correlation(a, -a) == -1.0
    assert rank_correlation(a, torch.zeros(16)) != rank_correlation(a, torch.zeros(16))      # NaN: no ranking


def test_gradient_maps_decorrelate_and_a_model_blind_map_does_not():
    clf = ImageClassifier(trained_net(), ["tl", "br"], mean=(0, 0, 0), std=(1, 1, 1), device="cpu", amp=False)
    before = [p.clone() for p in clf.model.parameters()]
    image = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(3)) * 0.3
    image[:, :6, :6] += 0.7
    methods = {"input_x_gradient": lambda s: InputXGradient(s),
               "integrated_gradients": lambda s: IntegratedGradients(s, steps=8),
               "image_itself": lambda s: ImageItself(s)}
    rows = cascading_randomisation(clf, "model", lambda m: ClassifierScorer(m, [0]), methods, [image], steps=3)
    assert all(torch.equal(a, b) for a, b in zip(before, clf.model.parameters()))        # the model is untouched
    assert len(parameter_layers(clf.model)) == 3 and {r["stage"] for r in rows} == {0, 1, 2, 3}
    by = {(r["method"], r["stage"]): r for r in rows}
    for name in ("input_x_gradient", "integrated_gradients"):
        assert by[(name, 0)]["spearman"] > 1 - 1e-9
        assert by[(name, 3)]["spearman_abs"] < 0.8, (name, [by[(name, s)]["spearman_abs"] for s in range(4)])
    assert all(by[("image_itself", s)]["spearman"] > 1 - 1e-9 for s in range(4))         # fails the check


def test_summary_passes_only_decorrelated_jobs_and_names_black_boxes():
    from tasks.report_sanity import passing_jobs, sanity_table
    from tasks.sanity import sanity_summary

    def row(job, stage, rho, rho_abs, target="t0"):
        return {"job": job, "method": job, "model": "detector", "stage": stage, "randomised": 10 * stage,
                "layers": 20, "top_layer": None, "image_id": "i", "target_id": target, "spearman": rho,
                "spearman_abs": rho_abs}

    rows = [row("good", 0, 1.0, 1.0), row("good", 2, 0.1, -0.2), row("good", 2, 0.3, 0.2, "t1"),
            row("blind", 0, 1.0, 1.0), row("blind", 2, 0.95, 0.9),
            row("half", 0, 1.0, 1.0), row("half", 2, 0.1, 0.8),              # signed low, absolute high: fails
            row("broken", 0, 1.0, 1.0), row("broken", 2, float("nan"), float("nan"))]
    status = {j: "checked" for j in ("good", "blind", "half", "broken")} | {"onnx": "not applicable: no autograd"}
    summary = sanity_summary(rows, status, 0.5)
    assert summary["good"]["passes"] and summary["good"]["spearman_full"] == 0.2          # median of 0.1, 0.3
    assert summary["good"]["targets"] == 2 and [s["stage"] for s in summary["good"]["stages"]] == [0, 2]
    assert not summary["blind"]["passes"] and not summary["half"]["passes"]
    assert not summary["broken"]["passes"] and summary["broken"]["spearman_full"] is None   # no value: not a pass
    assert summary["onnx"] == {"status": "not applicable: no autograd"}
    evaluate = {"sanity": {"steps": 2, "max_correlation": 0.5, "jobs": summary}}
    assert passing_jobs(evaluate) == {"good"}
    table = sanity_table(evaluate).set_index("job")
    assert table.loc["good", "verdict"] == "passes" and table.loc["blind", "verdict"].startswith(
        "does not pass: its maps survive")
    assert table.loc["broken", "verdict"].startswith("does not pass: no correlation")
    assert table.loc["onnx", "verdict"].startswith("not applicable")


def test_a_map_that_turns_constant_counts_as_uncorrelated():
    import numpy as np

    from tasks.sanity import _correlations

    trained = np.array([0.1, 0.5, -0.3, 0.9])
    assert _correlations(trained, np.zeros(4)) == (0.0, 0.0)
    assert _correlations(trained, trained * 2) == (1.0, 1.0)
    assert all(np.isnan(v) for v in _correlations(np.ones(4), np.ones(4)))         # nothing ranked: undefined


def test_verdicts_come_with_the_medians_interval_and_say_when_it_leaves_them_unsettled():
    """The medians at full randomisation carry a seeded bootstrap interval; a verdict is settled only when the
    intervals put it on one side of the limit (two targets either side of it, as the demo run's did, are not)."""
    import numpy as np

    from tasks.report_sanity import sanity_table
    from tasks.sanity import median_interval, sanity_summary, verdict_settled

    def rows(job, values):
        out = [{"job": job, "method": job, "model": "detector", "stage": 0, "randomised": 0, "layers": 20,
                "top_layer": None, "image_id": "i", "target_id": f"t{i}", "spearman": 1.0, "spearman_abs": 1.0}
               for i in range(len(values))]
        return out + [{**r, "stage": 3, "randomised": 20, "spearman": v, "spearman_abs": abs(v)}
                      for r, v in zip(out, values)]

    rng = np.random.default_rng(0)
    clear_pass = list(rng.uniform(-0.2, 0.2, 12))
    clear_fail = list(rng.uniform(0.8, 0.95, 12))
    straddle = [0.36, 0.62]                                   # median 0.49: passes, by a hair
    all_rows = rows("pass", clear_pass) + rows("fail", clear_fail) + rows("straddle", straddle)
    status = {j: "checked" for j in ("pass", "fail", "straddle")}
    summary = sanity_summary(all_rows, status, 0.5)
    assert summary["pass"]["passes"] and summary["pass"]["settled"]
    assert not summary["fail"]["passes"] and summary["fail"]["settled"]
    assert summary["straddle"]["passes"] and not summary["straddle"]["settled"]
    low, high = summary["fail"]["spearman_abs_full_interval"]
    assert low <= summary["fail"]["spearman_abs_full"] <= high and 0.8 <= low < high <= 0.95
    assert summary["straddle"]["spearman_full_interval"] == [0.36, 0.62]     # resampling 2 values: their range
    assert median_interval(clear_pass, "k") == median_interval(clear_pass, "k")           # seeded: same bytes
    assert median_interval([0.3, float("nan")], "k") is None                              # one finite value
    assert median_interval([], "k") is None and median_interval([0.3] * 12, "k") == [0.3, 0.3]   # empty, constant
    assert not verdict_settled([None, [0.0, 0.1]], 0.5)
    assert verdict_settled([[0.1, 0.2], [0.6, 0.9]], 0.5) and not verdict_settled([[0.1, 0.2], [0.4, 0.9]], 0.5)
    table = sanity_table({"sanity": {"steps": 3, "max_correlation": 0.5, "jobs": summary}}).set_index("job")
    assert table.loc["pass", "verdict"] == "passes" and "unsettled" not in table.loc["fail", "verdict"]
    assert table.loc["straddle", "verdict"].startswith("passes (unsettled: 95 % interval")


def test_sanity_rows_are_stored_per_job_and_target_and_replayed_with_their_errors(tmp_path, monkeypatch):
    """A second run reuses every (job, target)'s rows and replays the errors its re-explanations recorded (a
    target that fails the same way every run does not rebuild the cascade); the rows come in job, target, stage
    order either way; a changed image, target or job option gives another key."""
    import numpy as np
    import pandas as pd

    import tasks.sanity as sanity
    from tasks.params import ExplainJob, Params

    class Detector:                                   # an adapter whose network has parameters to randomise
        def __init__(self):
            self.model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))

    calls = []

    def explained_map(job, scorer_for, image, item, target_id, params, device, errors, stage):
        calls.append((job.name, target_id, stage))
        if target_id == "t1":                         # this target fails at every stage, every run
            errors.append({"stage": "evaluate", "uri": item["image"]["uri"], "image_id": "i0",
                           "error": "ValueError", "message": f"sanity {stage}: no non-empty body part"})
            return None
        return np.arange(4.0) if stage.startswith("stage 0") else np.array([3.0, 1.0, 2.0, 0.0])

    monkeypatch.setattr(sanity, "detector_model", lambda *a: Detector())
    monkeypatch.setattr(sanity, "sanity_bases", lambda params: {"detector": "base"})
    monkeypatch.setattr(sanity, "image_sha256", lambda uri: "image-bytes")
    monkeypatch.setattr(sanity, "load_image", lambda *a: torch.zeros(3, 4, 4))
    monkeypatch.setattr(sanity, "_scorer_for", lambda *a: None)
    monkeypatch.setattr(sanity, "_explained_map", explained_map)
    jobs = [{"method": "occlusion", "targets": "persons", "regions": "parts"}]
    params = Params(explain={"cache_dir": str(tmp_path / "store"), "jobs": jobs}, evaluate={"sanity": {"steps": 2}})
    targets = [{"target_id": t, "kind": "persons", "category": "person", "bbox": [0, 0, 2, 2], "class_probs": None,
                "parts_model": None, "parts_id": None, "image_id": "i0"} for t in ("t0", "t1")]
    items = [{"image": {"image_id": "i0", "uri": str(tmp_path / "i0.png"), "split": "val"}, "targets": targets,
              "parts": []}]
    chosen = {"occlusion@parts": [("i0", "t0"), ("i0", "t1")]}

    first = sanity.sanity_check.fn(items, chosen, params)
    assert (first["computed"], first["reused"]) == (2, 0) and len(calls) == 6 and len(first["errors"]) == 3
    assert [(r["target_id"], r["stage"]) for r in first["rows"]] == [("t0", 0), ("t0", 1), ("t0", 2), ("t1", 0),
                                                                      ("t1", 1), ("t1", 2)]
    calls.clear()
    second = sanity.sanity_check.fn(items, chosen, params)
    assert (second["computed"], second["reused"], calls) == (0, 2, [])            # no copy built, nothing explained
    assert pd.DataFrame(second["rows"]).equals(pd.DataFrame(first["rows"]))                  # NaN == NaN here
    assert [e["message"] for e in second["errors"]] == [e["message"] for e in first["errors"]]
    assert {e["uri"] for e in second["errors"]} == {items[0]["image"]["uri"]}


    job = ExplainJob(**jobs[0])
    key = sanity.sanity_key("base", "cpu", job, "image-bytes", items[0], "t0")
    moved = {**items[0], "targets": [{**targets[0], "bbox": [0, 0, 2, 3]}, targets[1]]}
    assert key == sanity.sanity_key("base", "cpu", job, "image-bytes", items[0], "t0")
    assert len({key, sanity.sanity_key("other-base", "cpu", job, "image-bytes", items[0], "t0"),
                sanity.sanity_key("base", "cpu", job, "other-bytes", items[0], "t0"),
                sanity.sanity_key("base", "cpu", job, "image-bytes", moved, "t0"),
                sanity.sanity_key("base", "cpu", ExplainJob(**jobs[0], budget=8), "image-bytes", items[0], "t0"),
                sanity.sanity_key("base", "cuda", job, "image-bytes", items[0], "t0")}) == 6
    assert sanity.sanity_key("base", "cpu", job, None, items[0], "t0") is None      # unreadable image: not stored

    targets.insert(0, {**targets[0], "target_id": "t00"})            # a new target sorting first: only it computed
    calls.clear()
    mixed = sanity.sanity_check.fn(items, {"occlusion@parts": [("i0", "t00"), ("i0", "t0"), ("i0", "t1")]}, params)
    assert (mixed["computed"], mixed["reused"]) == (1, 2) and {c[1] for c in calls} == {"t00"}
    assert [(r["target_id"], r["stage"]) for r in mixed["rows"]] == [(t, s) for t in ("t00", "t0", "t1")
                                                                      for s in range(3)]


def test_an_unsettled_verdict_is_checked_on_more_targets_and_a_settled_one_is_not():
    """extend_unsettled asks for targets targets .. max_targets - 1 of the unsettled jobs only, puts their rows after
    each job's first ones, adds errors and counts (also when the extension produced no rows), and leaves the result
    alone when nothing is unsettled or max_targets <= targets."""
    import numpy as np

    from tasks.sanity import sanity_summary
    from tasks.sanity_extension import extend_unsettled

    def rows(job, values, first=0):
        out = [{"job": job, "method": job, "model": "detector", "stage": 0, "randomised": 0, "layers": 20,
                "top_layer": None, "image_id": "i", "target_id": f"t{first + i}", "spearman": 1.0,
                "spearman_abs": 1.0} for i in range(len(values))]
        return out + [{**r, "stage": 3, "randomised": 20, "spearman": v, "spearman_abs": abs(v)}
                      for r, v in zip(out, values)]

    rng = np.random.default_rng(1)
    settled = rows("settled", list(rng.uniform(-0.2, 0.2, 4)))
    doubtful = rows("doubtful", [0.3, 0.7, 0.45, 0.6])            # median 0.525, interval across 0.5
    status = {"settled": "checked", "doubtful": "checked", "onnx": "not applicable: no network"}
    checked = {"rows": doubtful + settled, "errors": [{"message": "first"}], "status": status, "reused": 8,
               "computed": 0}
    asked = []

    def check_more(jobs, start, stop):
        asked.append((jobs, start, stop))
        return {"rows": rows("doubtful", list(rng.uniform(0.8, 0.9, stop - start)), first=start),
                "errors": [{"message": "more"}], "status": {"doubtful": "checked"}, "reused": 0,
                "computed": stop - start}

    before = sanity_summary(checked["rows"], status, 0.5)
    assert before["settled"]["settled"] and not before["doubtful"]["settled"]
    out = extend_unsettled(checked, 4, 12, 0.5, check_more)
    assert asked == [(["doubtful"], 4, 12)]
    assert out["extended"] == {"doubtful": 12} and out["computed"] == 8 and out["reused"] == 8
    assert [e["message"] for e in out["errors"]] == ["first", "more"]
    assert len(out["rows"]) == 8 + 8 + 16                                  # none lost, none twice
    assert [r["job"] for r in out["rows"]] == ["doubtful"] * 24 + ["settled"] * 8      # each job's rows together
    mine = [(r["target_id"], r["stage"]) for r in out["rows"] if r["job"] == "doubtful"]
    assert mine[:8] == [(r["target_id"], r["stage"]) for r in doubtful] and len(set(mine)) == 24
    after = sanity_summary(out["rows"], status, 0.5)
    assert after["doubtful"]["targets"] == 12 and after["doubtful"]["settled"] and not after["doubtful"]["passes"]
    assert after["settled"] == before["settled"] and after["onnx"] == {"status": status["onnx"]}

    def unreadable(jobs, start, stop):                      # the extension's images could not be read: no rows
        return {"rows": [], "errors": [{"message": "unreadable"}, {"message": "first"}], "status": {}, "reused": 0,
                "computed": 3}

    lost = extend_unsettled(checked, 4, 12, 0.5, unreadable)
    assert lost["rows"] == checked["rows"] and lost["extended"] == {} and lost["computed"] == 3
    assert [e["message"] for e in lost["errors"]] == ["first", "unreadable"]      # an image failing twice: one row
    asked.clear()
    assert extend_unsettled(checked, 4, 4, 0.5, check_more) is checked and not asked        # no room to extend
    assert extend_unsettled(checked, 4, 12, 0.5, lambda *a: None) is checked                # no target beyond
    calm = {**checked, "rows": settled}
    assert extend_unsettled(calm, 4, 12, 0.5, check_more) is calm and not asked            # nothing unsettled


def test_the_extension_takes_each_job_s_targets_after_its_first_ones():
    """sanity_targets(per_job, start): the sorted targets start .. per_job - 1 of each job; short jobs give what
    they have (nothing past their end)."""
    import pyarrow as pa

    from tasks.params import ExplainJob
    from tasks.sanity import sanity_targets

    jobs = [ExplainJob(method="rise", targets="classes", regions="none"),
            ExplainJob(method="occlusion", targets="persons", regions="parts")]
    keys = [("rise", f"img{i}", "c0") for i in (3, 1, 2, 0)] + [("occlusion@parts", "img0", "p0")]
    table = pa.table({"job": [k[0] for k in keys], "image_id": [k[1] for k in keys], "target_id": [k[2] for k in keys]})
    first = sanity_targets(table, jobs, 2)
    more = sanity_targets(table, jobs, 4, start=2)
    assert first == {"rise": [("img0", "c0"), ("img1", "c0")], "occlusion@parts": [("img0", "p0")]}
    assert more == {"rise": [("img2", "c0"), ("img3", "c0")], "occlusion@parts": []}


def test_the_report_says_how_many_targets_a_job_was_checked_on():
    """The note names the configured first targets and the extension of unsettled verdicts; an older summary without
    them falls back to the table's largest count."""
    import pandas as pd

    from tasks.report_sanity import _targets_phrase

    table = pd.DataFrame({"targets": [12, 40]})
    assert _targets_phrase({}, table) == "40 targets"
    assert _targets_phrase({"targets": 12, "max_targets": 12}, table) == "12 targets"
    assert _targets_phrase({"targets": 12, "max_targets": 40}, table).startswith(
        "12 targets, and up to its first 40 when its first 12 leave the verdict unsettled")
