"""explain -> evaluate -> report on a tiny project: resume after a crash, bad images, Dask = threads, the report."""
import hashlib
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

from flows.evaluate import run_evaluate
from flows.explain import run_explain
from flows.report import run_report

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import tasks.explain
from tasks.sanity import sanity_summary
from tasks.stages import ExplainOutputs
from tasks.timings import TIMINGS_DIR, read_shard_timings
from tests.conftest import TINY_JOBS, tiny_params

pytestmark = pytest.mark.slow


def read_explanations(out_dir: str):
    return ExplainOutputs(Path(out_dir), Path("metrics/explain.json")).read("explanations")


def read_errors(out_dir: str):
    return ExplainOutputs(Path(out_dir), Path("metrics/explain.json")).read("errors")


def output_hashes() -> dict[str, str]:
    """sha256 of every file of the explain, evaluate and report outputs and their metrics, as DVC hashes them
    (``_timings`` folders are .dvcignore'd)."""
    files = [p for root in ("data/explain", "data/evaluate", "report", "plots") for p in Path(root).rglob("*")
             if p.is_file() and TIMINGS_DIR not in p.parts]
    files += [Path("metrics/explain.json"), Path("metrics/evaluate.json")]
    assert len(files) > 10
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(files)}


def sorted_rows(table) -> list[dict]:
    rows = table.to_pylist()
    return sorted(rows, key=lambda r: (r["job"], r["image_id"], r["target_id"]))


def test_explain_writes_every_job_and_resumes_after_a_crash(explained, monkeypatch):
    project, first = explained                  # a copy of the session's threads run: first = run_explain(params)
    params = tiny_params(project)
    full = read_explanations("data/explain")
    targets = pq.read_table("data/explain/targets.parquet")
    persons = targets.filter(pc.equal(targets["kind"], "persons")).num_rows
    assert persons > 0 and first["errors"] == 0
    assert first["explanations"]["kernel_shap@parts"] == persons
    assert first["explanations"]["occlusion@parts"] == persons
    ks = full.filter(pc.equal(full["job"], "kernel_shap@parts")).to_pylist()
    assert all(r["n_forward"] <= 16 and len(r["relevance"]) == len(r["region_names"]) >= 3 for r in ks)
    assert all(len(r["saliency"]) == 48 * 64 for r in ks)
    drise = full.filter(pc.equal(full["job"], "drise")).to_pylist()
    assert drise and all(r["region_names"] for r in drise)           # pixel saliency summarised per body part

    # Crash: one image of a middle shard raises (after its retries), the flow fails, finished shards stay.
    shutil.rmtree("data/explain")
    images = sorted({r["image_id"] for r in full.to_pylist()})
    victim = images[len(images) // 2]
    real = tasks.explain.explain_image

    def crashing(item, *a, **kw):
        if item["image"]["image_id"] == victim:
            raise RuntimeError("simulated crash")
        return real(item, *a, **kw)

    monkeypatch.setattr(tasks.explain, "explain_image", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_explain(params)
    done_before = len(list(Path("data/explain/_done").iterdir()))
    assert 0 < done_before < first["shards"]
    # A write cut short by the kill leaves a temp file; it must not be read as data.
    Path("data/explain/explanations/job=rise/.shard-09999.parquet.dead.tmp").write_bytes(b"PAR1 half")

    monkeypatch.setattr(tasks.explain, "explain_image", real)
    resumed = run_explain(params)
    assert resumed["shards_run"] == first["shards"] - done_before
    assert sorted_rows(read_explanations("data/explain")) == sorted_rows(full)

    # Another budget is another config: the stored shards are dropped, not mixed in.
    changed = tiny_params(project, explain={"shard_size": 2, "min_height": 20,
                                            "jobs": [{"method": "occlusion", "targets": "persons"}]})
    again = run_explain(changed)
    assert again["shards_run"] == again["shards"]
    assert set(read_explanations("data/explain")["job"].to_pylist()) == {"occlusion@parts"}


def test_a_corrupt_image_lands_in_errors_and_the_rest_completes(project):
    params = tiny_params(project)
    images = pq.read_table("data/pulled/images.parquet").to_pylist()
    bad = images[len(images) // 2]
    Path(bad["uri"]).write_bytes(Path(bad["uri"]).read_bytes()[:200])      # truncated PNG
    result = run_explain(params)
    errors = read_errors("data/explain").to_pylist()
    assert [e["image_id"] for e in errors] == [bad["image_id"]] and errors[0]["stage"] == "explain"
    assert bad["uri"] in errors[0]["uri"]
    explained = set(read_explanations("data/explain")["image_id"].to_pylist())
    assert bad["image_id"] not in explained and len(explained) >= 2 and result["errors"] == 1

    summary = run_evaluate(params)
    assert summary["explanations"] > 0
    persons = summary["by_kind"]["persons"]

    # A metric is averaged where defined, else counted as undefined: the 1-epoch models give mostly flat maps.
    def counted(job: str, metric: str) -> bool:
        return metric in persons[job] or metric in persons[job].get("undefined", {})

    assert all(counted("drise", m) for m in ("deletion_auc", "insertion_auc", "pointing_box", "epg_box", "epg_body"))
    assert counted("kernel_shap@parts", "agree:occlusion@parts")
    assert 0 <= persons["kernel_shap@parts"].get("epg_box", 0) <= 1
    assert json.loads(Path("metrics/evaluate.json").read_text())["explanations"] == summary["explanations"]
    curves = Path("plots/causal_curves.csv").read_text().splitlines()
    defined = any("deletion_auc" in job for kind in summary["by_kind"].values() for job in kind.values())
    assert curves[0] == "job,fraction,deletion,insertion" and (len(curves) > 5 or not defined)
    assert Path("plots/part_relevance.csv").read_text().startswith("job,part,share")
    # the sanity check re-explained each job's first two targets (four where two left its verdict unsettled) on the
    # trained model and 3 randomised stages
    sanity = pq.read_table("data/evaluate/sanity.parquet").to_pandas()
    jobs = {j["method"] + ("@parts" if j["regions"] == "parts" else "") for j in TINY_JOBS}
    assert summary["sanity"]["jobs"].keys() == jobs and set(sanity["job"]) == jobs
    assert all(e["status"] == "checked" for e in summary["sanity"]["jobs"].values())
    assert sorted(set(sanity["stage"])) == [0, 1, 2, 3] and (sanity.groupby("job").size() <= 16).all()
    explanations = read_explanations("data/explain")
    for job, entry in summary["sanity"]["jobs"].items():       # 4 targets exactly where 2 left the verdict unsettled
        mine = sanity[sanity["job"] == job]
        first = sorted(set(zip(mine["image_id"], mine["target_id"])))[:2]
        at_two = sanity_summary([r for r in mine.to_dict("records") if (r["image_id"], r["target_id"]) in first],
                                {job: "checked"}, 0.5)[job]
        available = len(set(zip(*(explanations.filter(pc.equal(explanations["job"], job))[c].to_pylist()
                                   for c in ("image_id", "target_id")))))
        assert entry["targets"] == (min(4, available) if not at_two["settled"] else min(2, available)), job
    trained = sanity[sanity["stage"] == 0]
    assert ((trained["spearman"] == 1) | trained["spearman"].isna()).all()
    full = sanity[sanity["stage"] == 3]
    assert (full["randomised"] == full["layers"]).all() and (full["layers"] > 1).all()

    report = run_report(params)
    html = Path(report["report"]).read_text()
    parser = _Collect()
    parser.feed(html)
    assert {"summary", "findings", "parts", "agreement", "sanity", "classifier", "cost", "gallery",
            "errors"} <= parser.ids
    assert parser.images and all(src.startswith("data:image/png;base64,") for src in parser.images)
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", html)       # nothing fetched from outside
    assert bad["image_id"] in html                                             # the errors section names it
    assert Path("report/summary.md").read_text().startswith("# xai-audit summary")
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        keys = {a.key for a in client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(
            any_=["xai-audit-summary", "xai-audit-quality", "xai-audit-cost"])))}
    assert keys == {"xai-audit-summary", "xai-audit-quality", "xai-audit-cost"}


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.images = set(), []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "img":
            self.images.append(attrs.get("src", ""))


def test_dask_runner_with_two_workers_gives_the_same_rows_as_threads(explained):
    project, threads = explained                # a copy of the session's threads run: run_explain(tiny_params(project))
    expected = sorted_rows(read_explanations("data/explain"))
    shutil.rmtree("data/explain")
    dask = run_explain(tiny_params(project, explain={"shard_size": 2, "min_height": 20, "runner": {
        "kind": "dask", "workers": 2}, "jobs": json.loads(json.dumps(tasks_jobs()))}))
    assert dask["shards_run"] == threads["shards_run"]
    assert sorted_rows(read_explanations("data/explain")) == expected
    pids = {t["pid"] for t in read_shard_timings("data/explain").values()}
    assert len(pids) == 2                                                      # both workers took shards


def tasks_jobs():
    from tests.conftest import TINY_JOBS
    return TINY_JOBS


def test_cli_audit_chains_the_stages_and_explain_image_writes_an_overlay(explained, capsys):
    from flows.cli import main

    # The first run: the session's explain -> evaluate (computed from scratch, in process), then report.
    project, _ = explained
    params = tiny_params(project)
    assert main(["--params", str(params), "audit", "--stage", "report"]) == 0
    capsys.readouterr()
    first = output_hashes()
    for out in ("data/explain", "data/evaluate", "report"):
        shutil.rmtree(out)
    # The second: the CLI chains all three stages (explain and evaluate reuse the stored groups).
    assert main(["--params", str(params), "audit", "--stage", "explain", "--stage", "evaluate",
                 "--stage", "report"]) == 0
    assert Path("report/audit.html").is_file() and Path("data/evaluate/metrics.parquet").is_file()
    assert json.loads(capsys.readouterr().out)["explain"]["errors"] == 0
    assert "explain" in json.loads(Path("metrics/timings.json").read_text())
    # Run after run the same bytes (what dvc.lock hashes): wall times live only in _timings / metrics/timings.json.
    assert output_hashes() == first

    image = pq.read_table("data/pulled/images.parquet")["uri"][0].as_py()
    assert main(["--params", str(params), "explain", image, "--model", "demo-scene", "--budget", "32",
                 "--out", "one/overlay.png"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["method"] == "rise" and result["n_forward"] == 32 and len(result["targets"]) == 4
    assert Path("one/overlay.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["--params", str(params), "explain", image, "--model", "nope"]) == 2       # names the model
    assert "nope" in capsys.readouterr().err
