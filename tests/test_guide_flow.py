"""The guide stage end to end on the tiny project: fine-tune -> the same audit (infer, the classes explain job,
evaluate) under data/guide with the guided model id, the original's tables untouched -> held-out comparison ->
metrics/guide.json, and the report's section from them."""
import hashlib
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import tiny_params


def _digest(folder: str) -> str:
    h = hashlib.sha256()
    for p in sorted(Path(folder).rglob("*.parquet")):
        h.update(p.read_bytes())
    return h.hexdigest()


@pytest.mark.slow
def test_guide_fine_tunes_reaudits_side_by_side_and_reports(explained):
    from flows.guide import run_guide

    from tasks.params import load_params
    from tasks.report_guidance import guidance_section, load_guidance

    project, _ = explained                     # explain and evaluate done (the session's one run, copied)
    params = tiny_params(project, guide={"epochs": 1, "fraction": 0.5, "probe": {"n_scenes": 700},
                                         "decorrelated": {"seed": 9001, "n_images": 16, "correlation": 0.5},
                                         "heldout": {"seed": 9003, "n_images": 16}})
    before = {d: _digest(d) for d in ("data/infer", "data/explain", "data/evaluate")}
    metrics = run_guide(params)

    assert {d: _digest(d) for d in before} == before                      # the original audit is not rewritten
    guided = pq.read_table("data/guide/infer/predictions.parquet").to_pandas()
    assert set(guided["model_id"]) == {"demo-scene-guided"}
    assert pq.read_table("data/guide/evaluate/metrics.parquet").num_rows > 0
    saved = json.loads(Path("metrics/guide.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert saved["original"] == "demo-scene" and set(saved["models"]) == {"demo-scene", "demo-scene-guided"}
    assert saved["sets"]["probe_scenes_per_arm"] >= 200 and saved["training"]["annotated_images"] == 12
    assert Path("models/classifier_guided.pt").is_file() and Path("models/classifier_guided.json").is_file()
    assert not Path("data/guide/timings.json").exists()                  # wall times stay out of the outputs
    assert "guide" in json.loads(Path("metrics/timings.json").read_text())

    inp = load_guidance(load_params(params))
    body, md = guidance_section(inp, per_row=1)
    assert md[0] == "## Model guidance" and "<table>" in body
