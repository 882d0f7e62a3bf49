"""The report counts undefined metric values separately, shows EPG's chance level beside it, and states the missed
count with the found / missed rule of infer's recall. Pure functions of the tables: no flow, no model."""
import numpy as np
import pandas as pd
import pytest

from tasks.report import ReportInputs, build_report, quality_table


def _metrics() -> pd.DataFrame:
    def row(target, metric, value, job="drise"):
        return {"image_id": "img", "target_id": target, "kind": "persons", "job": job, "metric": metric,
                "value": value}

    return pd.DataFrame([
        row("a", "n_forward", 32.0), row("a", "pointing_box", 1.0), row("a", "epg_box", 0.5),
        row("a", "epg_box_chance", 0.1), row("a", "deletion_auc", 0.2),
        row("b", "n_forward", 32.0),                                   # the missed pedestrian: a flat map
        row("b", "undefined:pointing_box:constant_saliency", 1.0), row("b", "undefined:epg_box:constant_saliency", 1.0),
        row("b", "undefined:deletion_auc:constant_saliency", 1.0),
        row("c", "n_forward", 32.0), row("c", "pointing_box", 0.0),
        row("c", "undefined:epg_box:positive_everywhere", 1.0), row("c", "deletion_auc", 0.4)])


def _inputs() -> ReportInputs:
    targets = pd.DataFrame([{"image_id": "img", "target_id": t, "kind": "persons", "category": "person",
                             "bbox": [0.0, 0.0, 10.0, 20.0], "height": 20.0, "occlusion": 0.0, "found": f,
                             "score": s, "spurious_cue": None} for t, f, s in (("a", True, 0.9), ("b", False, 0.0),
                                                                                ("c", True, 0.5))])
    explanations = pd.DataFrame([{"image_id": "img", "target_id": t, "kind": "persons", "job": "drise",
                                  "relevance": None, "region_names": None, "saliency": np.zeros(12, np.float16),
                                  "saliency_height": 3, "saliency_width": 4, "n_forward": 32, "shared_by": 1,
                                  "device": "cpu"} for t in "abc"])
    return ReportInputs(images=pd.DataFrame([{"image_id": "img", "uri": "img.png", "split": "val"}]),
                        targets=targets, explanations=explanations, metrics=_metrics(), infer_metrics={},
                        explain_params={"jobs": []},
                        evaluate_summary={"pointing_tolerance": 12.0, "steps": 4, "causal_split": None,
                                          "substrates": {"deletion": "mean", "insertion": "blur"}},
                        errors=pd.DataFrame(columns=["stage", "image_id", "uri", "error_type", "message"]),
                        detector_id="det", classifier_id=None)


def test_undefined_values_are_counted_not_averaged_and_epg_has_its_chance_level():
    from tasks.report import undefined_table

    table = quality_table(_metrics()).to_dict(orient="records")
    assert len(table) == 1
    q = table[0]
    assert (q["pointing_box"], q["epg_box"], q["epg_box chance"]) == (0.5, 0.5, 0.1)
    assert q["deletion_auc"] == 0.30000000000000004
    assert (q["explanations"], q["undefined values"]) == (3, 4)
    assert undefined_table(_metrics()).values.tolist() == [
        ["persons", "drise", "deletion_auc", "constant_saliency", 1],
        ["persons", "drise", "epg_box", "constant_saliency", 1],
        ["persons", "drise", "epg_box", "positive_everywhere", 1],
        ["persons", "drise", "pointing_box", "constant_saliency", 1]]


def test_the_report_states_undefined_counts_the_epg_caveat_and_the_missed_count():
    page, md = build_report(_inputs(), per_row=0)
    assert "3 explained, 1 missed by the detector" in page
    assert "<h3 id='undefined'>Undefined metric values</h3>" in page
    assert "<td>positive_everywhere</td>" in page and "tolerance 12 px" in page
    assert "4 metric values are undefined and left out of the means (constant saliency 3, positive everywhere 1)" \
        in page
    assert "EPG (energy pointing game) is reported only for maps with a pixel" in page
    assert "## Undefined metric values" in md and "positive_everywhere" in md


def test_the_navigation_links_exactly_the_sections_rendered(tmp_path):
    import re

    from tests.report_fixture import report_inputs

    page, md = build_report(report_inputs(tmp_path), per_row=1)
    sections = re.findall(r'<section id="(\w+)">', page)
    assert sections == ["summary", "findings", "parts", "missed", "agreement", "classifier", "cost", "gallery",
                        "errors"]
    links = re.findall(r'<a href="#(\w+)">', page)
    assert links == ["summary", "findings", "parts", "agreement", "undefined", "classifier", "cost", "gallery"]
    assert all(f'id="{a}"' in page or f"id='{a}'" in page for a in links)
    assert "pedestrians, bayes_shapley@parts puts" in md              # the Shapley-family job is the main one
    page, _ = build_report(_inputs(), per_row=0)                      # no region job, no classifier, no errors
    assert re.findall(r'<a href="#(\w+)">', page) == ["summary", "findings", "agreement", "undefined", "cost"]


def test_every_number_in_the_quality_note_comes_from_the_evaluate_summary_or_its_defaults():
    from tasks.params import EvaluateParams
    from tasks.report import quality_note

    note = quality_note({"pointing_tolerance": 7.5, "steps": 9, "causal_split": "val",
                         "substrates": {"deletion": "mean", "insertion": "blur"}})
    assert "9 steps, on the val split" in note and "tolerance 7.5 px" in note
    assert "Lower deletion / higher insertion AUC is better" in note
    default = EvaluateParams().pointing_tolerance
    assert f"tolerance {default:g} px" in quality_note({})


def test_the_main_job_is_the_first_shapley_family_one_even_after_another_region_job(tmp_path):
    from tasks.report import ReportContext
    from tests.report_fixture import report_inputs

    inp = report_inputs(tmp_path)
    inp.explanations = inp.explanations.iloc[::-1].reset_index(drop=True)   # occlusion@parts comes first now
    ctx = ReportContext.of(inp, per_row=0)
    assert ctx.region_jobs == ["occlusion@parts", "bayes_shapley@parts"] and ctx.main_job == "bayes_shapley@parts"


def test_reliance_is_claimed_only_when_the_validated_jobs_agree_and_pass_sanity():
    from types import SimpleNamespace

    import pandas as pd

    from tasks.report import reliance_sentence

    def shares(tops: dict[str, str]) -> pd.DataFrame:
        rows = []
        for job, top in tops.items():
            for t in range(3):
                rows += [{"job": job, "target_id": f"p{t}", "part": part, "share": 0.6 if part == top else 0.2}
                         for part in ("head", "torso", "context")]
        return pd.DataFrame(rows)

    methods = {"occlusion@parts": "occlusion", "ig": "integrated_gradients", "bayes_shapley@parts": "bayes_shapley"}
    explanations = pd.DataFrame({"job": list(methods), "method": list(methods.values())})

    def inp(sanity: dict) -> SimpleNamespace:
        return SimpleNamespace(explanations=explanations, evaluate_summary={"sanity": {"jobs": sanity}})

    passed = {"status": "checked", "passes": True}
    agree = shares({"occlusion@parts": "torso", "ig": "torso", "bayes_shapley@parts": "head"})
    text = reliance_sentence(agree, inp({"occlusion@parts": passed, "ig": passed}))
    assert text.startswith("The detector relies most on <b>torso</b>") and "bayes_shapley" not in text
    disagree = shares({"occlusion@parts": "torso", "ig": "head"})
    assert reliance_sentence(disagree, inp({})).startswith("No reliance claim: the jobs")
    failing = {"occlusion@parts": passed, "ig": {"status": "checked", "passes": False}}
    alone = reliance_sentence(disagree, inp(failing))                  # ig failed sanity: occlusion alone
    assert alone.startswith("No reliance claim yet: occlusion@parts (sanity ✓): torso — only one method")
    explanations.loc[len(explanations)] = {"job": "occlusion@grid", "method": "occlusion"}       # grid cells: ignored
    grid = pd.concat([shares({"occlusion@parts": "torso", "ig": "torso"}),
                      shares({"occlusion@grid": "head"}).replace({"head": "r012", "torso": "r001"})])
    regions = {"occlusion@parts": "parts", "ig": "none", "bayes_shapley@parts": "parts", "occlusion@grid": "grid"}
    explanations["regions"] = explanations["job"].map(regions)
    assert reliance_sentence(grid, inp({})).startswith("The detector relies most on <b>torso</b>")
    two_jobs_one_method = shares({"occlusion@parts": "torso", "occlusion@grid": "torso"})
    explanations.loc[explanations["job"] == "occlusion@grid", "regions"] = "parts"
    assert reliance_sentence(two_jobs_one_method, inp({})).startswith("No reliance claim yet")
    only_unvalidated = shares({"bayes_shapley@parts": "head"})
    assert reliance_sentence(only_unvalidated, inp({})).startswith("No reliance claim: none of")


@pytest.mark.parametrize("value", [0.0, float("nan")])
def test_a_breakdown_of_all_zero_or_undefined_shares_draws_without_warnings(value):
    """A heat map whose shares are all 0 (nothing relevant) or all undefined still gets a valid colour range."""
    import warnings

    from tasks.report import fig_breakdown

    shares = pd.DataFrame({"job": "j", "part": ["head", "torso"] * 2, "height": ["small", "small", "large", "large"],
                           "share": value, "target_id": ["a", "a", "b", "b"]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fig_breakdown(shares, "j", "height", ["small", "large"], "t")
