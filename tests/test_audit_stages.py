"""flows/audit.py's stage list: the rexl policy stage runs after models (whose classifier it explains) and before
explain (which reads its policies), as its own subflow; `audit` runs it by default only where a job reads them."""
from __future__ import annotations

from pathlib import Path

import flows.audit as audit
from flows.cli import build_parser, default_stages

import yaml

DEMO = Path(__file__).resolve().parents[1] / "weights" / "demo"
RISE = {"method": "rise", "targets": "classes", "regions": "none", "budget": 8, "split": "val"}


def write_params(root: Path, policy: Path | None) -> str:
    jobs = [RISE] if policy is None else [RISE, {"method": "rexl", "targets": "classes", "regions": "none",
                                                 "split": "val", "options": {"policy": str(policy)}}]
    params = {"infer": {"detectors": [{"id": "demo-yolo", "kind": "yolo", "weights": str(DEMO / "detector.pt")}],
                        "pose": None, "classifier": {"id": "demo-scene", "kind": "saved",
                                                     "weights": str(DEMO / "classifier.pt")}},
              "explain": {"jobs": jobs, "cache_dir": str(root / "store")},
              "rexl": {"out_dir": str(root / "models/rexl"), "metrics": str(root / "metrics/rexl.json"),
                       "checkpoint_dir": str(root / "checkpoints"),
                       "classifier": {"grid": 2, "weights": None}}}
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return str(path)


def test_rexl_runs_between_models_and_the_stages_that_read_its_policies():
    stages = list(audit.STAGES)
    assert stages.index("models") < stages.index("rexl") < stages.index("infer") < stages.index("explain")


def test_the_rexl_stage_runs_flows_rexl(monkeypatch, tmp_path):
    import flows.rexl

    calls = []
    monkeypatch.setattr(flows.rexl, "run_rexl", lambda params_file: calls.append(params_file) or {"rexl": "done"})
    assert audit._run_stage("rexl", "my.yaml") == {"rexl": "done"}
    assert calls == ["my.yaml"]


def test_audit_runs_rexl_by_default_only_where_a_job_reads_the_stage_policy(tmp_path):
    stage_policy = tmp_path / "models/rexl/classifier_deletion.pt"
    with_job = default_stages(write_params(tmp_path, stage_policy))
    assert "rexl" in with_job and with_job.index("rexl") < with_job.index("explain")
    assert "rexl" not in default_stages(write_params(tmp_path, None))
    assert "rexl" not in default_stages(write_params(tmp_path, tmp_path / "my_own_policy.pt"))


def test_the_stage_option_help_names_rexl():
    parser = build_parser()
    assert parser.parse_args(["audit", "--stage", "rexl"]).stages == ["rexl"]
    audit_parser = next(a for a in parser._subparsers._group_actions[0].choices.values() if a.prog.endswith("audit"))
    help_text = next(a.help for a in audit_parser._actions if a.dest == "stages")
    assert "models rexl fastshap infer" in help_text and "without rexl" in help_text
    assert "without fastshap" in help_text
