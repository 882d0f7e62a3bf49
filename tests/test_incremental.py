"""Incremental re-audits (tasks.result_store): explain and evaluate reuse stored groups whose key is unchanged, compute
only the rest, and write exactly what a from-scratch run writes; a changed model, job or explainer code invalidates
exactly its groups; concurrent writers of one key and corrupt store files are harmless."""
import hashlib
import json
import multiprocessing
import shutil
import warnings
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import tasks.explain
from tasks.result_store import DEFAULT_CACHE_DIR, CacheWarning, ResultStore, digest
from tasks.timings import TIMINGS_DIR
from tests.conftest import tiny_params
from tests.result_store_fixture import entry, write_many

JOBS = [
    {"method": "occlusion", "targets": "persons", "regions": "parts"},
    {"method": "drise", "targets": "persons", "regions": "none", "budget": 16, "options": {"grid": 4}},
    {"method": "rise", "targets": "classes", "regions": "none", "budget": 16, "split": "val"},
]


def _params(root: Path, n_images: int = 12, jobs=JOBS) -> Path:
    return tiny_params(root, pull={"synthetic": {"n_images": n_images}},
                       explain={"shard_size": 2, "min_height": 20, "jobs": jobs},
                       evaluate={"steps": 2, "shard_size": 4, "causal_split": None,
                                 "sanity": {"targets": 1, "max_targets": 1}})


def _timings(stage: str) -> dict:
    return json.loads(Path("metrics/timings.json").read_text())[stage]


def _output_hashes(stages: tuple[str, ...] = ("explain", "evaluate")) -> dict[str, str]:
    """sha256 of every file the stages write (what DVC hashes: _timings are ignored)."""
    roots = [f"data/{s}" for s in stages] + (["plots"] if "evaluate" in stages else [])
    files = [p for root in roots for p in Path(root).rglob("*") if p.is_file() and TIMINGS_DIR not in p.parts]
    files += [Path(f"metrics/{s}.json") for s in stages]
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(files)}


def _groups_of(image_ids: set[str]) -> int:
    """How many explanation groups explain computes for these images (tasks.explain.job_groups' rule)."""
    targets = pq.read_table("data/explain/targets.parquet").to_pylist()
    images = {r["image_id"]: r["split"] for r in pq.read_table("data/pulled/images.parquet").to_pylist()}
    n = 0
    for iid in image_ids:
        for job in JOBS:
            if job.get("split") not in (None, images[iid]):
                continue
            mine = [t for t in targets if t["image_id"] == iid and t["kind"] == job["targets"]]
            n += len(mine) if job.get("regions", "parts") == "parts" else int(bool(mine))
    return n


def _images_of(job: str) -> int:
    """Images with explanations of a shared-forward job (one group each)."""
    return len(set(pq.read_table(f"data/explain/explanations/job={job}")["image_id"].to_pylist()))


def _run(params: Path) -> None:
    from flows.evaluate import run_evaluate
    from flows.explain import run_explain

    run_explain(params)
    run_evaluate(params)


pytestmark = pytest.mark.slow


def test_an_added_image_computes_only_its_groups_and_equals_a_from_scratch_run(project):
    from flows.infer import run_infer
    from flows.parts import run_parts
    from flows.pull import run_pull

    # The dataset's first version: the tiny project's first 6 images (of 12; image i is a function of i), then one
    # more (index 6: two persons, train split). Each explain / evaluate below runs on half the images of 12 -> 13.
    first = _params(project, 6)
    for stage in (run_pull, run_infer, run_parts):
        stage(first)
    _run(first)
    old_images = set(pq.read_table("data/pulled/images.parquet")["image_id"].to_pylist())
    old_detections = pq.read_table("data/infer/detections.parquet")
    assert len(old_images) == 6

    new = _params(project, 7)                         # the next dataset version: one image more
    for stage in (run_pull, run_infer, run_parts):
        stage(new)
    added = set(pq.read_table("data/pulled/images.parquet")["image_id"].to_pylist()) - old_images
    assert len(added) == 1
    # the old images' detections are unchanged (else their targets, hence keys, change): measured, not assumed
    detections = pq.read_table("data/infer/detections.parquet")
    old_ids = pa.array(sorted(old_images))
    assert detections.filter(pc.is_in(detections["image_id"], value_set=old_ids)).drop_columns(
        ["run_id"]).equals(old_detections.drop_columns(["run_id"]))

    _run(new)
    explain, evaluate = _timings("explain"), _timings("evaluate")
    expected = _groups_of(added)
    assert explain["groups_computed"] == expected > 0
    assert explain["groups_reused"] == _groups_of(old_images | added) - expected
    metrics = pq.read_table("data/evaluate/metrics.parquet")
    assert 0 < evaluate["groups_computed"] < evaluate["groups_reused"]
    # the sanity check's chosen targets (each job's first, sorted) are the old images': their rows are reused
    assert evaluate["sanity_targets_reused"] == len(JOBS) and evaluate["sanity_targets_computed"] == 0
    assert set(metrics["image_id"].to_pylist()) >= added
    incremental = _output_hashes()

    for out in ("data/explain", "data/evaluate", DEFAULT_CACHE_DIR):       # from scratch, cold store
        shutil.rmtree(out)
    _run(new)
    assert _timings("explain")["groups_reused"] == 0
    assert _timings("evaluate")["sanity_targets_computed"] == len(JOBS)
    assert _output_hashes() == incremental                 # byte for byte, what dvc.lock would hash


# Every job on the val split's images only (3 of the 12, 12 persons): the invalidation rules below are per group, the
# same on 3 images as on 12, at a third of the explain runs' cost.
VAL_JOBS = [{**job, "split": "val"} for job in JOBS]


def test_a_changed_model_job_or_explainer_invalidates_exactly_its_groups(project, monkeypatch, tmp_path):
    from flows.explain import run_explain

    params = _params(project, jobs=VAL_JOBS)
    run_explain(params)
    total = _timings("explain")["groups_computed"]
    reference = _output_hashes(("explain",))

    def rerun(p=params) -> dict:
        shutil.rmtree("data/explain")          # same config hash would keep the finished shards
        run_explain(p)
        return _timings("explain")

    # unchanged: everything reused, identical outputs
    again = rerun()
    assert (again["groups_computed"], again["groups_reused"]) == (0, total)
    assert _output_hashes(("explain",)) == reference

    # an edit of the occlusion explainer's code: only the occlusion job is recomputed
    extra = tmp_path / "occlusion_edit.py"
    extra.write_text("# edited\n")
    real = tasks.explain.job_code_files
    monkeypatch.setattr(tasks.explain, "job_code_files",
                        lambda m: real(m) + ((extra,) if m == "occlusion" else ()))
    occl = rerun()
    n_occlusion = pq.read_table("data/explain/explanations/job=occlusion@parts").num_rows
    assert occl["groups_computed"] == n_occlusion > 0                  # one group per target
    assert occl["groups_reused"] == total - n_occlusion
    assert _output_hashes(("explain",)) == reference                               # an edit that changes no number
    monkeypatch.setattr(tasks.explain, "job_code_files", real)

    # the detector's weights: every detector job recomputed, the classifier's rise job (one group per image) reused
    real_sha = tasks.explain.model_sha256
    monkeypatch.setattr(tasks.explain, "model_sha256",
                        lambda spec: real_sha(spec) + ("-retrained" if spec.kind == "yolo" else ""))
    retrained = rerun()
    rise_groups = _images_of("rise")
    assert retrained["groups_reused"] == rise_groups > 0
    assert retrained["groups_computed"] == total - rise_groups
    monkeypatch.setattr(tasks.explain, "model_sha256", real_sha)

    # one job's options: only that job's groups recomputed
    jobs = [dict(j) for j in VAL_JOBS]
    jobs[1] = {**jobs[1], "budget": 24}
    changed = rerun(_params(project, jobs=jobs))
    assert changed["groups_computed"] == _images_of("drise") > 0

    # corrupt store files: ignored with a warning, everything recomputed, same rows
    params = _params(project, jobs=VAL_JOBS)   # the original jobs again (the file was rewritten above)
    for f in Path(DEFAULT_CACHE_DIR, "explain").glob("*.parquet"):
        f.write_bytes(b"PAR1 not really")
    with pytest.warns(CacheWarning, match="ignoring unreadable file"):
        cold = rerun(params)
    assert cold["groups_reused"] == 0 and cold["groups_computed"] == total
    assert _output_hashes(("explain",)) == reference


# ---------------------------------------------------------------------------------------------------- the store
def test_concurrent_writes_of_the_same_keys_are_safe(tmp_path):
    ctx = multiprocessing.get_context("spawn")      # the writer lives in a light module: each process imports it
    workers = [ctx.Process(target=write_many, args=(str(tmp_path), 15)) for _ in range(3)]
    for w in workers:
        w.start()
    store = ResultStore(tmp_path, "t", ("metrics", "errors"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)          # a reader never sees a half-written file
        while any(w.is_alive() for w in workers):
            found = store.get_many([digest(i) for i in range(20)])
            assert all(found[digest(i)]["metrics"]["value"].to_pylist() == [float(i), i + 0.5]
                       for i in range(20) if digest(i) in found)
    assert all(w.exitcode == 0 for w in workers)
    assert len(list((tmp_path / "t").glob("*.parquet"))) == 1      # one content-addressed name
    assert not list((tmp_path / "t").glob(".*.tmp"))
    found = store.get_many([digest(i) for i in range(25)])
    assert sorted(found) == sorted(digest(i) for i in range(20))
    assert found[digest(3)]["errors"]["x"].to_pylist() == [3] and found[digest(3)]["seconds"] == 1.0


def test_a_corrupt_store_file_is_a_miss_with_a_warning(tmp_path):
    store = ResultStore(tmp_path, "t", ("metrics", "errors"))
    good = store.put_many({digest("a"): entry(1)})
    (tmp_path / "t" / "zz-truncated.parquet").write_bytes(good.read_bytes()[:40])
    (tmp_path / "t" / "zz-other.parquet").write_bytes(b"not parquet at all")
    with pytest.warns(CacheWarning) as caught:
        found = store.get_many([digest("a"), digest("b")])
    assert list(found) == [digest("a")]
    assert {Path(str(w.message).split(": ")[1]).name for w in caught} >= {"zz-truncated.parquet", "zz-other.parquet"}
    with pytest.raises(KeyError, match="missing tables"):
        store.put_many({digest("c"): {"metrics": pa.table({"v": [1]})}})


def test_keys_change_with_what_they_hash():
    base = {"job": {"method": "occlusion", "budget": 8}, "bbox": [1.0, 2.0, 3.0, 4.5],
            "rle": pa.array([3, 4]).to_numpy()}
    assert digest(base) == digest(dict(reversed(list(base.items()))))           # key order does not matter
    assert digest(base) != digest({**base, "bbox": [1.0, 2.0, 3.0, 4.500001]})
    assert digest(base) != digest({**base, "job": {"method": "occlusion", "budget": 9}})
    import numpy as np
    assert digest(base) != digest({**base, "rle": np.array([3, 5])})
    assert digest({"x": np.array([1], np.int32)}) != digest({"x": np.array([1], np.int64)})


def test_jobs_of_one_name_on_two_target_kinds_get_their_own_key_bases(monkeypatch):
    """rise on persons and rise on classes share a name: each keeps the base of its own budget and model (found by
    review: bases keyed by name alone let the last job's settings key the other's groups)."""
    from tasks.explain import job_base_name, job_bases
    from tasks.params import parse_params

    monkeypatch.setattr(tasks.explain, "model_sha256", lambda spec: spec.id)
    monkeypatch.setattr(tasks.explain, "files_digest", lambda files: "code")
    jobs = [{"method": "rise", "targets": "persons", "regions": "none", "budget": 256},
            {"method": "rise", "targets": "classes", "regions": "none", "budget": 256}]
    params = parse_params({"explain": {"jobs": jobs}}, check_files=False)
    bases = job_bases(params)
    assert sorted(bases) == sorted(job_base_name(j) for j in params.explain.jobs) and len(bases) == 2
    jobs[0]["budget"] = 512
    changed = job_bases(parse_params({"explain": {"jobs": jobs}}, check_files=False))
    persons, classes = (job_base_name(j) for j in params.explain.jobs)
    assert changed[persons] != bases[persons] and changed[classes] == bases[classes]
