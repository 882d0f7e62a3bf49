"""The prepared GPU check (benchmarks/gpu_check.py) stays runnable: its Python part in CPU-small mode on a copy of the
tiny project's val images (threads and a one-worker Dask run), and its JSON has every key the GPU run is read by."""
import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


@pytest.fixture
def gpu_check(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import gpu_check

    return gpu_check


def test_gpu_check_runs_in_cpu_small_mode_and_writes_every_key(gpu_check, tiny_project, tmp_path, monkeypatch):
    project = tmp_path / "project"
    shutil.copytree(tiny_project, project, ignore=shutil.ignore_patterns(".work"))
    monkeypatch.setenv("OUT", str(tmp_path / "out"))           # where the device tool collects files
    result = gpu_check.main(["--small", "--project", str(project), "--split", "val"])      # 2-3 images
    written = json.loads((tmp_path / "out/gpu_check.json").read_text())
    assert written == json.loads(json.dumps(result))
    assert written["mode"] == "cpu-small" and written["sizes"] == gpu_check.SIZES["cpu-small"]
    assert {"environment", "sizes", "amp", "throughput", "runs", "methods", "seconds_total"} <= written.keys()
    assert set(written["amp"]) == set(written["throughput"]) == {"detector", "classifier"}
    assert all(a["applicable"] is False and "CUDA" in a["reason"] for a in written["amp"].values())
    for t in written["throughput"].values():
        assert all(b["raw_images_per_s"] > 0 and b["scorer_images_per_s"] > 0 for b in t["batches"])
    runs = written["runs"]
    assert runs["threads"]["errors"] == runs["dask"]["errors"] == 0
    assert runs["threads"]["explanations"] == runs["dask"]["explanations"] > 0 and runs["same_keys"]
    assert set(runs["by_job"]) == set(written["methods"])
    jobs = {"bayes_shapley@parts", "kernel_shap@parts", "occlusion@parts", "drise", "integrated_gradients", "rise"}
    assert set(written["methods"]) == jobs
    for m in written["methods"].values():
        assert m["explanations"] > 0 and m["forwards"] > 0 and m["explainer_seconds"] > 0 and "consistent" in m
        f, sec = m["forward_seconds_at_scorer_rate"], m["explainer_seconds"]
        rounding = 5e-4 * (1 / sec + f / sec ** 2) + 5e-4     # both inputs and the result are rounded to 3 decimals
        assert m["net_overhead"] == pytest.approx(1 - f / sec, abs=rounding)


def test_gpu_check_writes_to_out_or_benchmarks_results(gpu_check, monkeypatch, tmp_path):
    monkeypatch.setenv("OUT", str(tmp_path))
    assert gpu_check.output_path(None) == tmp_path / "gpu_check.json"
    assert gpu_check.output_path("x.json") == Path("x.json")
    monkeypatch.delenv("OUT")
    assert gpu_check.output_path(None) == REPO / "benchmarks/results/gpu_check.json"
