"""pull -> explain -> evaluate -> report on the tiny project: the attribute tables, the user's own attributes, the
slices / misses tables, the summary and the report's "Where it fails" section."""
import json

from flows.evaluate import run_evaluate
from flows.explain import run_explain
from flows.pull import run_pull
from flows.report import run_report

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from detection.attributes import AttributeTableError
from tests.conftest import tiny_params

pytestmark = pytest.mark.slow


def test_attributes_slices_misses_and_the_report_section_end_to_end(explained):
    project, _ = explained      # a copy of the session's explain -> evaluate: the explain run below reuses its groups
    before = {n: pq.read_table(f"data/pulled/{n}.parquet") for n in ("images", "annotations", "gt_parts")}
    anns = before["annotations"]
    persons = anns.filter(pc.equal(anns["category"], "person")).select(["image_id", "ann_id"]).to_pandas()
    persons.assign(weather=["rain" if i % 2 else "sun" for i in range(len(persons))]).to_csv("weather.csv",
                                                                                             index=False)
    params = tiny_params(project, pull={"synthetic": {"n_images": 12}, "attributes": ["weather.csv"]})
    run_pull(params)
    for name, table in before.items():                                    # the dataset itself is unchanged
        assert pq.read_table(f"data/pulled/{name}.parquet").equals(table)
    drawn = pq.read_table("data/pulled/attributes.parquet")
    computed = pq.read_table("data/pulled/computed_attributes.parquet")
    assert drawn.num_rows == computed.num_rows == len(persons)
    assert set(drawn["facing"].to_pylist()) <= {"front", "back", "left", "right"}
    assert pq.read_table("data/pulled/user_attributes.parquet").column_names == ["image_id", "ann_id", "weather"]

    run_explain(params)
    summary = run_evaluate(params)["where_it_fails"]
    slices = pq.read_table("data/evaluate/slices.parquet")
    misses = pq.read_table("data/evaluate/misses.parquet")
    assert summary["ground_truth"] and summary["persons"] == len(persons)
    assert {"facing", "box_height", "weather"} <= set(summary["attributes"])
    assert summary["job"] == "kernel_shap@parts" and summary["explained"] > 0
    assert set(summary["mr2"]) == {"reasonable", "small", "heavy_occlusion"}
    n_missed = round(summary["miss_rate"] * summary["persons"])
    assert misses.num_rows == n_missed == sum(t["count"] for t in summary["miss_types"] if t["kind"] == "miss")
    assert set(misses["miss_type"].to_pylist()) <= {"suppressed", "below_threshold", "mislocalised", "never_seen"}
    assert set(slices["outcome"].to_pylist()) <= {"missed", "share:context", *(f"share:{p}" for p in
                                                                              _parts(project))}
    stored = json.loads(open("metrics/evaluate.json").read())["where_it_fails"]
    assert stored["persons"] == summary["persons"]

    run_report(params)
    page = open("report/audit.html").read()
    section = page.split('<section id="failures">')[1].split("</section>")[0]
    assert f"{summary['persons']} ground-truth pedestrians" in section
    assert "Log-average miss rate" in section and "Why pedestrians were missed" in section
    assert "## Where it fails" in open("report/summary.md").read()


def _parts(project) -> set[str]:
    parts = pq.read_table(project / "data/parts/parts.parquet")
    return set(parts["part"].to_pylist())


def test_a_user_attribute_table_that_does_not_fit_is_an_error_naming_the_file(project):
    (project / "bad.csv").write_text("image_id,ann_id,weather\nnot-an-image,x,rain\n")
    params = tiny_params(project, pull={"synthetic": {"n_images": 12}, "attributes": ["bad.csv"]})
    with pytest.raises(AttributeTableError, match="bad.csv: 1 of 1 rows match no annotation"):
        run_pull(params)
    (project / "nokey.csv").write_text("image,weather\na,rain\n")
    params = tiny_params(project, pull={"synthetic": {"n_images": 12}, "attributes": ["nokey.csv"]})
    with pytest.raises(AttributeTableError, match=r"nokey.csv: missing key column\(s\)"):
        run_pull(params)
