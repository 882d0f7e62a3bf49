"""``xai-audit compare``: two tiny synthetic audits (Parquet tables with the project's schemas, metrics files as the
stages write them) where B moves relevance from the head to the torso in one job, relies more on the spurious cue
and misses three pedestrians A found. The comparison must find exactly those, the intervals must exclude 0 only
where the shift is real, and the exit code must follow the thresholds."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from flows.compare import FAIL_ON_HELP, add_arguments, load_audit, main

import numpy as np
import pandas as pd
import pytest

from detection.body import BODY_PARTS
from detection.datasets.tables import rows_to_table, write_table_atomic
from tasks.compare import GATES, Audit, CompareError, check_gates, compare, parse_gates, part_shift

PARTS = [*BODY_PARTS, "context"]
JOBS = ("occlusion@parts", "bayes_shapley@parts")
SHIFTED_JOB, NULL_JOB = JOBS
TRANSFER = 0.05               # B: this share of |relevance| moves from the head to the torso (SHIFTED_JOB only)
NOISE = 0.05                  # B: every part's relevance + N(0, NOISE) (a retrained model), both jobs
N_IMAGES, PER_IMAGE = 40, 3
HEIGHTS = (20.0, 45.0, 90.0, 160.0)      # one per size bucket (tiny, small, medium, large)
OCCLUSIONS = (0.0, 0.3, 0.7)             # none, partial, heavy
FLIPPED = ("im003/p0", "im010/p1", "im021/p2")   # found in A, missed in B
RECOVERED = ("im005/p1",)                        # missed in A, found in B
MISSED_A = {"im005/p1", "im030/p0"}
SEED_B = 1                    # B's noise draw (test_null_shifts_are_rarely_flagged checks the null rate over others)


def _persons():
    for i in range(N_IMAGES):
        for k in range(PER_IMAGE):
            n = i * PER_IMAGE + k
            yield f"im{i:03d}", f"p{k}", HEIGHTS[n % 4], OCCLUSIONS[n % 3]


def _relevance(rng: np.random.Generator) -> dict[tuple[str, str, str], np.ndarray]:
    """A's relevance per (image, target, job): positive, the head largest (so the transfer keeps it positive)."""
    out = {}
    for im, t, *_ in _persons():
        for job in JOBS:
            rel = rng.uniform(0.5, 1.5, len(PARTS))
            rel[PARTS.index("head")] = rng.uniform(1.5, 2.5)
            out[(im, t, job)] = rel
    return out


def _b_relevance(a: dict, rng: np.random.Generator) -> dict:
    out = {}
    for key, rel in a.items():
        rel = rel + rng.normal(0, NOISE, rel.size)
        if key[2] == SHIFTED_JOB:
            moved = TRANSFER * np.abs(rel).sum()
            rel[PARTS.index("head")] -= moved
            rel[PARTS.index("torso")] += moved
        out[key] = rel
    return out


def _metrics_files(cue_with: float, ap50: float) -> tuple[dict, dict]:
    infer = {"demo-yolo": {"val": {"ap50": ap50, "ap": ap50 / 2, "ap50_reasonable": ap50 + 0.1, "images": 40,
                                   "recall_by_size": {"small": 0.7, "small_count": 30}}},
             "demo-scene": {"val": {"mean_f1": 0.9},
                            "spurious": {"p_bicycle_absent_with_cue": cue_with, "p_bicycle_absent_without_cue": 0.15,
                                         "images_with_cue": 9, "images_without_cue": 44}},
             "run_id": "abc"}
    by_job = {job: {"deletion_auc": 0.15, "insertion_auc": 0.45, "pointing_box": 1.0, "epg_body": 0.6,
                    "epg_body_chance": 0.03, "explanations": N_IMAGES * PER_IMAGE} for job in JOBS}
    evaluate = {"by_kind": {"persons": by_job},
                "sanity": {"jobs": {job: {"status": "checked", "passes": True, "spearman_abs_full": 0.2,
                                          "stages": [{"stage": 0, "spearman": 1.0}, {"stage": 1, "spearman": 0.1}]}
                                    for job in JOBS}},
                "where_it_fails": {"mr2": {"reasonable": {"mr2": 0.08, "low": 0.05, "high": 0.12, "persons": 90}},
                                   "mr_fppi": {"reasonable": {"fppi": [0.01, 0.1], "miss_rate": [0.3, 0.1]}}}}
    return infer, evaluate


def write_audit(root: Path, relevance: dict, missed: set[str], cue_with: float, ap50: float,
                plot: bool = True) -> Path:
    """A run directory as `dvc repro` leaves it (the parts compare reads): params.yaml, data/pulled/images,
    data/explain targets + explanation shards, metrics/infer.json, metrics/evaluate.json, plots/part_relevance.csv."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text("seed: 0\n")
    images = [{"image_id": f"im{i:03d}", "uri": f"images/im{i:03d}.png", "width": 64, "height": 48, "split": "val",
               "source": "synthetic", "sha256": f"sha{i}"} for i in range(N_IMAGES)]
    write_table_atomic(rows_to_table(images, "images"), root / "data/pulled/images.parquet")
    targets = [{"image_id": im, "split": "val", "target_id": t, "kind": "persons", "model_id": "demo-yolo",
                "category": "person", "bbox": [0.0, 0.0, 10.0, h], "height": h, "occlusion": occ,
                "found": f"{im}/{t}" not in missed, "score": 0.5} for im, t, h, occ in _persons()]
    write_table_atomic(rows_to_table(targets, "targets"), root / "data/explain/targets.parquet")
    for job in JOBS:
        rows = [{"image_id": im, "target_id": t, "kind": "persons", "job": job, "method": job.partition("@")[0],
                 "regions": "parts", "saliency": np.zeros(4, np.float16), "saliency_height": 2, "saliency_width": 2,
                 "region_names": PARTS, "relevance": relevance[(im, t, job)].tolist(), "n_forward": 12,
                 "shared_by": 1, "device": "cpu"} for im, t, *_ in _persons()]
        write_table_atomic(rows_to_table(rows, "explanations"),
                           root / f"data/explain/explanations/job={job}/shard-00000.parquet")
    infer, evaluate = _metrics_files(cue_with, ap50)
    (root / "metrics").mkdir(exist_ok=True)
    (root / "metrics/infer.json").write_text(json.dumps(infer, indent=2, sort_keys=True) + "\n")
    (root / "metrics/evaluate.json").write_text(json.dumps(evaluate, indent=2, sort_keys=True) + "\n")
    if plot:                                   # what evaluate_summary.plot_part_relevance writes for these tables
        lines = ["job,part,share"]
        for job in sorted(JOBS):
            for p, part in sorted(enumerate(PARTS), key=lambda x: x[1]):
                shares = [r[p] / np.abs(r).sum() for (im, t, j), r in relevance.items() if j == job]
                lines.append(f"{job},{part},{np.mean(shares):.5f}")
        (root / "plots").mkdir(exist_ok=True)
        (root / "plots/part_relevance.csv").write_text("\n".join(lines) + "\n")
    return root


def _audit_from(relevance: dict, missed: set[str]) -> Audit:
    """An in-memory audit of these relevance values (no files: for the calibration loop)."""
    targets = pd.DataFrame([{"image_id": im, "target_id": t, "kind": "persons", "height": h, "occlusion": occ,
                             "found": f"{im}/{t}" not in missed, "score": 0.5} for im, t, h, occ in _persons()])
    explanations = pd.DataFrame([{"image_id": im, "target_id": t, "kind": "persons", "job": job,
                                  "method": job.partition("@")[0], "region_names": PARTS, "relevance": rel}
                                 for (im, t, job), rel in relevance.items()])
    return Audit("mem", pd.DataFrame(columns=["image_id", "sha256"]), targets, explanations, {}, "i", "e", "det")


@pytest.fixture(scope="module")
def audits(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("compare")
    rel_a = _relevance(np.random.default_rng(0))
    rel_b = _b_relevance(rel_a, np.random.default_rng(SEED_B))
    missed_b = (MISSED_A - set(RECOVERED)) | set(FLIPPED)
    a = write_audit(root / "a", rel_a, MISSED_A, cue_with=0.60, ap50=0.80)
    b = write_audit(root / "b", rel_b, missed_b, cue_with=0.80, ap50=0.79)
    return a, b


@pytest.fixture(scope="module")
def result(audits):
    a, b = audits
    return compare(load_audit(a, "A"), load_audit(b, "B"), parse_gates(["part_shift=ci"]))


def test_compare_finds_the_part_shift_and_only_it(result):
    cells = result.cells
    overall = cells[cells["breakdown"] == "all"]
    assert result.jobs == {"both": sorted(JOBS), "only_a": [], "only_b": []}
    moved = overall[overall["sim_significant"] == True]  # noqa: E712
    assert set(zip(moved["job"], moved["part"])) == {(SHIFTED_JOB, "head"), (SHIFTED_JOB, "torso")}
    head = overall.set_index(["job", "part"]).loc[(SHIFTED_JOB, "head")]
    assert head["shift"] == pytest.approx(-TRANSFER, abs=0.01) and head["high"] < 0
    torso = overall.set_index(["job", "part"]).loc[(SHIFTED_JOB, "torso")]
    assert torso["shift"] == pytest.approx(TRANSFER, abs=0.01) and torso["low"] > 0
    # every null cell of the overall rows: its simultaneous interval holds 0
    null = overall[~overall.set_index(["job", "part"]).index.isin([(SHIFTED_JOB, "head"), (SHIFTED_JOB, "torso")])]
    assert ((null["sim_low"] <= 0) & (null["sim_high"] >= 0)).all()
    # by bucket: the real shift shows in every size (4) and occlusion (3) bucket, with its marginal interval
    buckets = cells[(cells["breakdown"] != "all") & (cells["job"] == SHIFTED_JOB) & (cells["part"] == "head")]
    assert len(buckets) == 7 and (buckets["high"] < 0).all()
    assert len(cells[cells["job"] == NULL_JOB]) == 8 * len(PARTS)
    assert set(overall["paired_images"]) == {N_IMAGES}
    assert result.gates[0].failed and len(result.gates[0].reasons) == 2


def test_compare_finds_the_cue_flips_and_metrics(result):
    assert result.cue.label == "bicycle"
    assert result.cue.reliance_a == pytest.approx(0.45) and result.cue.change == pytest.approx(0.20)
    fm = result.found_missed
    assert fm.found_to_missed == tuple(sorted(FLIPPED)) and fm.missed_to_found == RECOVERED
    assert fm.paired == N_IMAGES * PER_IMAGE and fm.still_missed == 1 and fm.only_a == fm.only_b == 0
    ap50 = next(r for r in result.detector if r.name == "ap50")
    assert (ap50.key_a, ap50.a, ap50.b) == ("demo-yolo.val.ap50", 0.80, 0.79)
    assert ap50.worse_by == pytest.approx(0.01)
    assert all(r.diff == 0 for r in result.quality) and not any(s.regressed for s in result.sanity)
    # the JSON names metrics by the metrics files' own (DVC's flattened) keys
    metrics = result.to_json()["metrics"]
    assert metrics["metrics/infer.json"]["demo-scene.spurious.p_bicycle_absent_with_cue"] == {
        "old": 0.6, "new": 0.8, "diff": pytest.approx(0.2)}
    assert metrics["metrics/evaluate.json"]["where_it_fails.mr2.reasonable.mr2"]["diff"] == 0
    assert result.warnings == []                # the plots agree with the tables


def test_an_audit_against_itself_changes_nothing(audits):
    a = load_audit(audits[0], "A")
    gates = parse_gates(["part_shift=ci", "cue_reliance_up=0", "ap_drop=0", "new_misses=0", "quality_drop=0",
                         "mr2_up=0", "sanity=fail"])
    same = compare(a, a, gates)
    assert (same.cells["shift"] == 0).all() and not same.cells["significant"].any()
    assert same.exit_code == 0 and not same.failed


@pytest.mark.parametrize("fail_on, failed", [
    (["cue_reliance_up=0.3", "ap_drop=0.02", "new_misses=3", "part_shift=0.06", "mr2_up=0", "quality_drop=0",
      "sanity=regress", "sanity=fail"], []),
    (["cue_reliance_up=0.1", "cue_reliance_up=0.19"], ["cue_reliance_up=0.1", "cue_reliance_up=0.19"]),
    (["ap_drop=0.005", "ap_drop=0.011"], ["ap_drop=0.005"]),
    (["new_misses=2", "new_misses=0"], ["new_misses=2", "new_misses=0"]),
    (["part_shift=ci", "part_shift=0.04", "part_shift=0.051"], ["part_shift=ci", "part_shift=0.04"]),
])
def test_each_gate_follows_its_threshold(result, fail_on, failed):
    """Gates checked one at a time on the comparison (each given alone, as a name may be given once)."""
    verdicts = {spec: check_gates(result, parse_gates([spec]))[0] for spec in fail_on}
    assert [spec for spec, v in verdicts.items() if v.failed] == failed
    assert all(v.reasons for v in verdicts.values() if v.failed)


@pytest.mark.parametrize("fail_on, code", [
    (["cue_reliance_up=0.3", "ap_drop=0.02", "new_misses=3", "part_shift=0.06"], 0),
    (["cue_reliance_up=0.1", "ap_drop=0.02", "part_shift=ci"], 1),
])
def test_exit_code_follows_the_thresholds(audits, tmp_path, capsys, fail_on, code):
    a, b = audits
    out_json, out_html = tmp_path / "c.json", tmp_path / "c.html"
    args = [str(a), str(b), "--html", str(out_html), "--json", str(out_json)]
    for spec in fail_on:
        args += ["--fail-on", spec]
    assert main(args) == code
    printed = capsys.readouterr().out
    data = json.loads(out_json.read_text())
    assert data["exit_code"] == code and [g["spec"] for g in data["gates"]] == fail_on
    failed = [g["spec"] for g in data["gates"] if g["failed"]]
    assert failed == ([] if code == 0 else ["cue_reliance_up=0.1", "part_shift=ci"])
    assert all(f"FAIL {spec}" in printed for spec in failed) and printed.count("FAIL ") == len(failed)
    page = out_html.read_text()
    assert page.startswith("<!DOCTYPE html>") and "http://" not in page and "https://" not in page
    assert ("FAILED" in page) == bool(code) and "data:image/png;base64," in page


def test_null_shifts_are_rarely_flagged():
    """Calibration: B = A + noise only (no real shift), over 6 noise draws: the simultaneous intervals of the 22
    overall cells (family-wise 95 %) flag a null shift in at most 1 draw (expected 0.3), and the marginal 95 %
    intervals of all 176 cells exclude 0 in at most 10 % of the cells (measured: 6.7 % over 8 draws; 30-40 images
    a cell: the bootstrap's intervals are a little narrow at that size, as the report's are)."""
    rel_a = _relevance(np.random.default_rng(0))
    a = _audit_from(rel_a, MISSED_A)
    flagged, marginal = 0, []
    for draw in range(6):
        rng = np.random.default_rng(100 + draw)
        rel_b = {k: v + rng.normal(0, NOISE, v.size) for k, v in rel_a.items()}
        cells, _, _ = part_shift(a, _audit_from(rel_b, MISSED_A), set())
        flagged += bool(cells["sim_significant"].fillna(False).astype(bool).any())
        marginal.append(cells["significant"].mean())
    assert flagged <= 1 and np.mean(marginal) <= 0.10


def test_usage_errors_name_what_is_wrong(audits, tmp_path, capsys):
    a, b = audits
    assert main([str(a), str(b), "--html", str(tmp_path / "x.html"), "--fail-on", "cue_up=0.1"]) == 2
    assert "unknown threshold 'cue_up'" in capsys.readouterr().err
    assert main([str(a), str(tmp_path / "nowhere"), "--repo", str(tmp_path)]) == 2
    assert "nowhere" in capsys.readouterr().err
    broken = tmp_path / "broken"
    shutil.copytree(a, broken)
    shutil.rmtree(broken / "data/explain/explanations")
    (broken / "metrics/evaluate.json").unlink()
    assert main([str(a), str(broken), "--html", str(tmp_path / "x.html")]) == 2
    err = capsys.readouterr().err
    assert "data/explain/explanations" in err and "metrics/evaluate.json" in err and "infer.json" not in err
    assert not (tmp_path / "x.html").exists()


@pytest.mark.parametrize("spec, words", [
    ("part_shift", "NAME=VALUE"), ("ap_drop=-1", "a number >= 0"), ("ap_drop=lots", "a number >= 0"),
    ("new_misses=1.5", "whole number"), ("sanity=0.1", "'regress' or 'fail'"), ("part_shift=nan", "'ci'")])
def test_bad_thresholds(spec, words):
    with pytest.raises(CompareError, match=words):
        parse_gates([spec])
    with pytest.raises(CompareError, match="given twice"):
        parse_gates(["ap_drop=0.1", "ap_drop=0.2"])


def test_gate_names_are_documented_in_the_cli_help():
    assert all(f"{name}=" in FAIL_ON_HELP for name in GATES)
    gates = parse_gates(["PART_SHIFT=CI".lower(), "new_misses=0", "sanity=Regress"])
    assert [g.value for g in gates] == ["ci", 0.0, "regress"]


def test_a_gate_that_cannot_be_checked_fails(audits):
    a, b = load_audit(audits[0], "A"), load_audit(audits[1], "B")
    b_no_cue = type(b)(**{**b.__dict__, "classifier_id": None})
    c = compare(a, b_no_cue, parse_gates(["cue_reliance_up=0.5"]))
    assert c.exit_code == 1 and "cannot check cue reliance" in c.gates[0].reasons[0]


def test_stale_plots_and_metrics_are_reported(audits, tmp_path):
    """What DVC shows of the mean shares (plots/part_relevance.csv; evaluate.json part_shares where evaluate writes
    it) must be what the tables give; a mismatch (outputs of different runs) is a warning naming the file."""
    stale = tmp_path / "stale"
    shutil.copytree(audits[1], stale)
    plot = pd.read_csv(stale / "plots/part_relevance.csv")
    summary = json.loads((stale / "metrics/evaluate.json").read_text())
    summary["part_shares"] = {job: dict(zip(g["part"], g["share"])) for job, g in plot.groupby("job")}
    (stale / "metrics/evaluate.json").write_text(json.dumps(summary))
    assert compare(load_audit(audits[0], "A"), load_audit(stale, "B")).warnings == []
    plot.loc[0, "share"] += 0.01
    plot.to_csv(stale / "plots/part_relevance.csv", index=False)
    summary["part_shares"][SHIFTED_JOB]["head"] += 0.01
    (stale / "metrics/evaluate.json").write_text(json.dumps(summary))
    warnings = compare(load_audit(audits[0], "A"), load_audit(stale, "B")).warnings
    assert len(warnings) == 2 and "plots/part_relevance.csv disagrees" in warnings[0]
    assert f"metrics/evaluate.json part_shares disagrees with the explain tables for 1 (job, part) mean shares, e.g. " \
           f"{SHIFTED_JOB} head" in warnings[1]


# ---------------------------------------------------------------------------------------------------- git / dvc
def _git(cmd: list[str], cwd: Path, env: dict) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.mark.slow
def test_git_revisions_and_dvc_metrics_diff(audits, tmp_path, tool_env, capsys):
    """Audit A committed, then B (data/ tracked by DVC, metrics in git): `compare HEAD~1 HEAD` reads them through
    DVC and gives the directories' result, and a DVC experiment is read by its name; its metrics JSON equals
    `dvc metrics diff --all --json`, its overall mean shares what `dvc plots diff` shows."""
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(["git", "init", "-q", "-b", "main"], repo, tool_env)
    _git(["dvc", "init", "-q"], repo, tool_env)
    (repo / "dvc.yaml").write_text("metrics:\n  - metrics/infer.json\n  - metrics/evaluate.json\n"
                                   "plots:\n  - plots/part_relevance.csv:\n      x: part\n      y: share\n")
    for audit in audits:
        for sub in ("data", "metrics", "plots"):
            shutil.rmtree(repo / sub, ignore_errors=True)
            shutil.copytree(audit / sub, repo / sub, copy_function=shutil.copy)   # new mtimes: never A's stat
        shutil.copy(audit / "params.yaml", repo / "params.yaml")
        _git(["dvc", "add", "-q", "data/pulled", "data/explain"], repo, tool_env)
        # git trusts an unchanged (mtime, size): A's and B's files of one size written within one clock tick look
        # unchanged; dropping them from the index makes git hash B's contents
        _git(["git", "rm", "-r", "-q", "--cached", "--ignore-unmatch", "metrics", "plots", "params.yaml"], repo,
             tool_env)
        _git(["git", "add", "-A"], repo, tool_env)
        _git(["git", "commit", "-q", "-m", f"audit {audit.name}"], repo, tool_env)
    out = tmp_path / "rev.json"
    code = main(["HEAD~1", "HEAD", "--repo", str(repo), "--json", str(out), "--html", str(tmp_path / "rev.html"),
                 "--fail-on", "cue_reliance_up=0.1"])
    assert code == 1
    revs = json.loads(out.read_text())
    dirs = compare(load_audit(audits[0]), load_audit(audits[1]), parse_gates(["cue_reliance_up=0.1"])).to_json()
    assert revs["part_shift"]["cells"] == dirs["part_shift"]["cells"]
    assert revs["found_missed"] == dirs["found_missed"] and revs["cue"] == dirs["cue"]
    dvc_diff = json.loads(_git(["dvc", "metrics", "diff", "--all", "--json", "HEAD~1", "HEAD"], repo, tool_env))
    assert revs["metrics"] == dvc_diff
    # `dvc plots diff` (the part-share CSV declared as a plot, as proposed for dvc.yaml) shows the overall means
    plots = json.loads(_git(["dvc", "plots", "diff", "--json", "HEAD~1", "HEAD"], repo, tool_env))
    shown = {(v["rev"], v["job"], v["part"]): float(v["share"])
             for v in plots["data"]["plots/part_relevance.csv"][0]["content"]["data"]["values"]}
    overall = [c for c in revs["part_shift"]["cells"] if c["breakdown"] == "all"]
    assert len(shown) == 2 * len(overall) == 2 * len(JOBS) * len(PARTS)
    for c in overall:
        assert shown[("HEAD~1", c["job"], c["part"])] == pytest.approx(c["mean_a"], abs=1e-5)
        assert shown[("HEAD", c["job"], c["part"])] == pytest.approx(c["mean_b"], abs=1e-5)
    # a DVC experiment by name: B with a stronger cue, saved as an experiment (not on the branch)
    infer = json.loads((repo / "metrics/infer.json").read_text())
    infer["demo-scene"]["spurious"]["p_bicycle_absent_with_cue"] = 0.95
    (repo / "metrics/infer.json").write_text(json.dumps(infer, indent=2, sort_keys=True) + "\n")
    _git(["dvc", "exp", "save", "-q", "-n", "stronger-cue"], repo, tool_env)
    _git(["git", "checkout", "-q", "--", "metrics/infer.json"], repo, tool_env)
    assert main(["HEAD", "stronger-cue", "--repo", str(repo), "--json", str(out), "--html", str(out) + ".html"]) == 0
    assert json.loads(out.read_text())["cue"]["change"] == pytest.approx(0.15)
    # the data of a revision missing from the DVC cache: an error naming it
    shutil.rmtree(repo / ".dvc/cache")
    capsys.readouterr()
    assert main(["HEAD~1", "HEAD", "--repo", str(repo), "--html", str(tmp_path / "x.html")]) == 2
    err = capsys.readouterr().err
    assert "HEAD~1" in err and "data/explain" in err and "dvc fetch" in err
    assert main(["no-such-rev", "HEAD", "--repo", str(repo)]) == 2
    assert "no-such-rev" in capsys.readouterr().err


def test_the_cli_sub_command_takes_the_same_arguments():
    """flows/cli.py declares compare's arguments itself (importing flows.compare there would make it a code
    dependency of every stage); they must be flows.compare.add_arguments' own."""
    import argparse

    from flows.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    if "compare" not in sub.choices:
        pytest.skip("flows/cli.py has no compare sub-command yet (the diff in the compare task's report)")

    def spec(parser: argparse.ArgumentParser) -> set:
        return {(tuple(a.option_strings), a.dest, repr(a.default), a.nargs, type(a).__name__) for a in parser._actions
                if a.dest not in ("help", "params")}

    assert spec(sub.choices["compare"]) == spec(add_arguments(argparse.ArgumentParser()))


def test_a_part_without_an_interval_fails_the_part_shift_gate(result):
    """A part that vanished from B (or has too few images for an interval) cannot be checked: the gate fails
    rather than passing on a NaN interval (found by review)."""
    import dataclasses

    cells = result.cells.copy()
    row = cells.index[(cells["breakdown"] == "all")][0]
    cells.loc[row, ["mean_b", "sim_low", "sim_high"]] = np.nan
    cells.loc[row, "sim_significant"] = False
    gone = dataclasses.replace(result, cells=cells) if dataclasses.is_dataclass(result) else None
    reasons = check_gates(gone, parse_gates(["part_shift=ci"]))[0].reasons
    assert any(r.startswith("cannot check part shift") and r.endswith("absent in B") for r in reasons)


def test_sanity_and_detector_gates_on_missing_values(result):
    """A job that passed its sanity check in A and was not checked in B cannot be checked (fails 'regress'); a
    detector metric undefined in both audits is no change (does not fail ap_drop), one undefined in B is."""
    import dataclasses

    from tasks.compare import MetricChange, SanityChange

    dropped = dataclasses.replace(result, sanity=[SanityChange("rise", "checked", None, True, None, 0.1, None)])
    reasons = check_gates(dropped, parse_gates(["sanity=regress"]))[0].reasons
    assert list(reasons) == ["cannot check sanity rise: passes in A, absent in B"]
    assert not check_gates(dropped, parse_gates(["sanity=fail"]))[0].failed
    flipped = dataclasses.replace(result, sanity=[SanityChange("rise", "checked", "checked", True, False, 0.1, 0.52,
                                                               False, [0.3, 0.7])])
    reasons = check_gates(flipped, parse_gates(["sanity=regress"]))[0].reasons   # still a failure, said unsettled
    assert list(reasons) == ["sanity rise: passes in A, does not pass in B (|rho| at full randomisation 0.52; "
                             "unsettled: its interval crosses the limit)"]
    counted = dataclasses.replace(flipped, sanity=[dataclasses.replace(flipped.sanity[0], targets_a=12,
                                                                       targets_b=40)])
    assert check_gates(counted, parse_gates(["sanity=regress"]))[0].reasons[0] == (
        "sanity rise: passes in A, does not pass in B (|rho| at full randomisation 0.52, on 40 targets in B, 12 in A; "
        "unsettled: its interval crosses the limit)")
    one = dataclasses.replace(flipped, sanity=[dataclasses.replace(flipped.sanity[0], interval_b=None)])
    assert check_gates(one, parse_gates(["sanity=fail"]))[0].reasons[0].endswith(
        "unsettled: no interval (fewer than 2 targets with a correlation))")

    ap = [r for r in result.detector if r.name == "ap50"][0]
    undefined = dataclasses.replace(ap, name="ap50_reasonable", a=None, b=None)
    both_nan = dataclasses.replace(result, detector=[*result.detector, undefined])
    assert not check_gates(both_nan, parse_gates(["ap_drop=0.02"]))[0].failed
    gone = dataclasses.replace(result, detector=[dataclasses.replace(undefined, a=0.5)])
    reasons = check_gates(gone, parse_gates(["ap_drop=0.02"]))[0].reasons
    assert len(reasons) == 2 and reasons[0].startswith("cannot check detector ap50_reasonable")
    assert isinstance(ap, MetricChange)
