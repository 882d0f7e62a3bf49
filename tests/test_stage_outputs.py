"""Stage outputs are declared once (tasks/stages.py): dvc.yaml's outs / metrics / plots of each declared stage are
derived from the declarations and must match them; flows read and write through them; the shard convention."""
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from detection.datasets.tables import SCHEMAS, rows_to_table, write_table_atomic
from tasks import stages
from tasks.params import load_params
from tasks.shards import (
    collect_staged,
    fresh_staging,
    is_done,
    keep_if_same_config,
    mark_done,
    publish,
    read_shards,
    staged_shard_dir,
    write_json,
    write_shard,
)
from tests.conftest import REPO


def _paths(entries: list) -> list[Path]:
    """dvc.yaml list entries (a path, or a one-key mapping path -> options) -> paths."""
    return [Path(next(iter(e)) if isinstance(e, dict) else e) for e in entries or []]


def _persist(entries: list) -> set[Path]:
    return {Path(k) for e in entries or [] if isinstance(e, dict) for k, v in e.items() if (v or {}).get("persist")}


@pytest.mark.parametrize("stage", sorted(stages.STAGES))
def test_dvc_yaml_outs_metrics_and_plots_are_the_declared_outputs(stage):
    declared = stages.STAGES[stage](load_params(REPO / "params.yaml"))
    entry = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage]
    assert _paths(entry.get("outs")) == declared.dvc_outs()
    assert _paths(entry.get("metrics")) == declared.dvc_metrics()
    assert _paths(entry.get("plots")) == declared.dvc_plots()
    assert _persist(entry.get("outs")) == (set(declared.dvc_outs()) if getattr(declared, "persist", False) else set())


def test_every_declared_table_has_a_schema():
    for make in stages.STAGES.values():
        declared = make(load_params(REPO / "params.yaml"))
        assert set(getattr(declared, "TABLES", {})) <= set(SCHEMAS)


def test_sharded_tables_read_only_shard_files_in_order(tmp_path):
    out = stages.ExplainOutputs(tmp_path / "explain", tmp_path / "explain.json")
    assert out.read("errors").num_rows == 0 and out.read("errors").schema == SCHEMAS["errors"]
    files = out.shard_files(1, ["a"])
    row = {"stage": "explain", "uri": "x.png", "error_type": "t", "message": "m", "image_id": "i1"}
    write_table_atomic(rows_to_table([row], "errors"), files["errors"])
    write_table_atomic(rows_to_table([{**row, "image_id": "i0"}], "errors"), out.shard_files(0, ["a"])["errors"])
    (files["errors"].parent / ".shard-00002.parquet.dead.tmp").write_bytes(b"PAR1 half")
    assert out.read("errors")["image_id"].to_pylist() == ["i0", "i1"]
    with pytest.raises(KeyError):
        out.path("errors")


def test_a_staged_shard_is_read_only_once_marked_done_and_published_in_one_swap(tmp_path):
    out = tmp_path / "infer"
    out.mkdir()
    (out / "old").write_text("previous output")
    staging = fresh_staging(out)
    row = {"stage": "infer", "uri": "x.png", "error_type": "t", "message": "m", "image_id": "i"}
    done = write_shard(staged_shard_dir(staging, 0), errors=[row])
    half = Path(staged_shard_dir(staging, 1))
    half.mkdir(parents=True)
    write_table_atomic(rows_to_table([row, row], "errors"), half / "errors.parquet")   # crashed before its marker
    assert is_done(Path(done).parent, Path(done).name) and not is_done(half.parent, half.name)
    assert read_shards([done, half], ("errors",))["errors"].num_rows == 1
    tables = collect_staged(staging, [done, half], ("errors", "metrics"))
    assert tables["errors"].num_rows == 1 and tables["metrics"].num_rows == 0
    assert not (staging / "_shards").exists()
    declared = stages.InferOutputs(out, tmp_path / "infer.json")
    declared.write(staging, {"errors": tables["errors"]})
    assert (out / "old").exists()                            # the previous output stays whole until publish
    publish(staging, out)
    assert not (out / "old").exists() and pq.read_table(declared.path("errors")).num_rows == 1


def test_persistent_shards_are_kept_only_for_the_same_config(tmp_path):
    out = tmp_path / "explain"
    keep_if_same_config(out, "k1")
    write_json(out / "manifest.json", {"config_hash": "k1"})
    mark_done(out, "shard-00000", {"rows": 3})
    keep_if_same_config(out, "k1")
    assert is_done(out, "shard-00000")
    keep_if_same_config(out, "k2")
    assert out.is_dir() and not is_done(out, "shard-00000")
