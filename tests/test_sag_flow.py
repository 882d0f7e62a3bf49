"""A sag job on the tiny project (slow): explain writes its graphs to the sag table beside the explanations (one
'target' row per explained pedestrian, roots and edges keyed like the explanations, a common-contract explanation
row with relevance per part), evaluate treats it like any job, and the report shows "Sufficient part sets"."""
from collections import Counter
from pathlib import Path

from flows.evaluate import run_evaluate
from flows.explain import run_explain
from flows.report import run_report

import pyarrow.compute as pc
import pytest

from tasks.stages import ExplainOutputs
from tests.conftest import tiny_params

pytestmark = pytest.mark.slow

SAG_JOB = {"method": "sag", "targets": "persons", "regions": "parts", "budget": 48, "split": "val",
           "options": {"importance_budget": 16}}


def test_a_sag_job_writes_its_graphs_and_the_report_shows_sufficient_part_sets(project):
    params = tiny_params(project, explain={"shard_size": 4, "min_height": 20, "jobs": [SAG_JOB]},
                         evaluate={"steps": 2, "shard_size": 8, "causal_split": None,
                                   "sanity": {"targets": 12, "max_targets": 12}})
    summary = run_explain(params)
    out = ExplainOutputs(Path("data/explain"), Path("metrics/explain.json"))
    explanations, sag = out.read("explanations"), out.read("sag")
    assert summary["errors"] == 0 and explanations.num_rows > 0
    assert set(explanations["job"].to_pylist()) == {"sag@parts"}
    rows = explanations.to_pylist()
    assert all(len(r["relevance"]) == len(r["region_names"]) >= 3 and r["n_forward"] <= 48 for r in rows)
    targets = sag.filter(pc.equal(sag["element"], "target")).to_pylist()
    assert sorted((t["image_id"], t["target_id"]) for t in targets) == sorted(
        (r["image_id"], r["target_id"]) for r in rows)                  # one graph per explanation
    by_target = {(r["image_id"], r["target_id"]): r for r in rows}
    for t in targets:
        assert t["parts"] == by_target[(t["image_id"], t["target_id"])]["region_names"]
        assert t["status"] in ("complete", "budget", "flat") and t["job"] == "sag@parts" and t["kind"] == "persons"
    roots = sag.filter(pc.equal(sag["element"], "root")).to_pylist()
    assert all(r["share"] >= r["threshold"] - 1e-6 for r in roots)      # sufficient, by definition
    with_roots = {(r["image_id"], r["target_id"]) for r in roots}
    complete = {(t["image_id"], t["target_id"]) for t in targets if t["status"] == "complete"}
    assert complete <= with_roots                   # a finished search always finds one (all parts suffice)
    print("sag statuses", Counter(t["status"] for t in targets), "roots", len(roots), "targets with roots",
          len(with_roots))
    edges = sag.filter(pc.equal(sag["element"], "edge")).to_pylist()
    assert all(set(e["child"]) | {e["removed"]} == set(e["parts"]) for e in edges)
    assert sorted(p.name for p in Path("data/explain/sag").iterdir()) == sorted(
        p.name for p in Path("data/explain/errors").iterdir())           # one sag file per shard

    assert run_evaluate(params)["explanations"] == explanations.num_rows
    run_report(params)
    page = Path("report/audit.html").read_text()
    assert '<section id="sag"><h2>Sufficient part sets</h2>' in page and 'href="#sag"' in page
    assert "## Sufficient part sets" in Path("report/summary.md").read_text()
