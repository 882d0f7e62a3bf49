"""The pull stage end to end through Prefect: determinism, idempotence, bad input, nothing lost on failure."""
import hashlib
import json
from pathlib import Path

from flows.cli import main as cli
from flows.pull import run_pull

import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from detection.datasets.records import AnnotationError
from detection.datasets.tables import DatasetTables
from tests.helpers import write_coco, write_image

pytestmark = pytest.mark.slow


def _params(path: Path, pull: dict, workers: int = 2) -> Path:
    path.write_text(yaml.safe_dump({"seed": 0, "workers": workers, "pull": pull}))
    return path


SYNTH = {"source": "synthetic", "shard_size": 4, "synthetic": {"n_images": 10, "persons_per_image": [1, 4]}}


def _snapshot(out: Path) -> dict:
    return {f.name: pq.read_table(f).to_pylist() for f in sorted(out.glob("*.parquet"))}


def test_synthetic_pull_is_deterministic_and_idempotent(prefect_server, in_tmp):
    stats = run_pull(_params(in_tmp / "p.yaml", SYNTH))
    out = in_tmp / "data" / "pulled"
    tables = DatasetTables.read(out)
    assert stats["images"] == tables.images.num_rows == 10
    assert stats["persons"] >= 10 and tables.gt_parts.num_rows == 10 * stats["persons"]
    assert tables.errors.num_rows == 0
    for row in tables.images.to_pylist():                      # URIs point at the published files
        data = (in_tmp / row["uri"]).read_bytes()
        assert row["uri"].startswith("data/pulled/images/syn-")
        assert hashlib.sha256(data).hexdigest() == row["sha256"]
    assert json.loads((in_tmp / "metrics" / "pull.json").read_text())["images"] == 10
    coco = json.loads((out / "coco.json").read_text())
    assert len(coco["annotations"]) == tables.annotations.num_rows
    assert not (in_tmp / "data" / "pulled.staging").exists()

    first = _snapshot(out)
    run_pull(_params(in_tmp / "p1.yaml", SYNTH, workers=1))     # re-run, other thread count: same tables
    assert _snapshot(out) == first
    run_pull(_params(in_tmp / "p2.yaml", {**SYNTH, "shard_size": 3}))
    assert _snapshot(out) == first


def test_bad_images_are_recorded_and_skipped(prefect_server, in_tmp):
    photos = in_tmp / "photos"
    write_image(photos / "ok.jpg")
    write_image(photos / "gray.png", mode="L")
    write_image(photos / "alpha.png", mode="RGBA")
    write_image(photos / "cmyk.jpg", mode="CMYK")
    Image.new("I;16", (40, 30), 40000).save(photos / "deep.png")
    (photos / "empty.jpg").write_bytes(b"")
    (photos / "text.png").write_text("hello")
    data = (photos / "ok.jpg").read_bytes()
    (photos / "cut.jpg").write_bytes(data[: len(data) // 2])
    Image.new("RGB", (3, 3)).save(photos / "tiny.png")
    stats = run_pull(_params(in_tmp / "p.yaml", {"source": "folder", "shard_size": 2,
                                                 "folder": {"images_dir": "photos"}}))
    tables = DatasetTables.read(in_tmp / "data" / "pulled")
    modes = {r["image_id"]: r["mode"] for r in tables.images.to_pylist()}
    assert modes == {"ok.jpg": "RGB", "gray.png": "L", "alpha.png": "RGBA", "cmyk.jpg": "CMYK", "deep.png": "I;16"}
    errors = {r["image_id"]: (r["stage"], r["error_type"]) for r in tables.errors.to_pylist()}
    assert errors == {"empty.jpg": ("pull", "empty_file"), "text.png": ("pull", "not_an_image"),
                      "cut.jpg": ("pull", "truncated"), "tiny.png": ("pull", "too_small")}
    assert all(r["uri"].startswith("photos/") for r in tables.errors.to_pylist())
    assert stats["errors_by_type"] == {"empty_file": 1, "not_an_image": 1, "too_small": 1, "truncated": 1}


def test_broken_annotation_file_keeps_previous_output(prefect_server, in_tmp):
    write_coco(in_tmp / "coco")
    pull = {"source": "coco", "coco": {"annotations": "coco/annotations.json", "images_dir": "coco/images"}}
    run_pull(_params(in_tmp / "p.yaml", pull))
    out = in_tmp / "data" / "pulled"
    before = _snapshot(out)
    assert len(before["images.parquet"]) == 3 and len(before["annotations.parquet"]) == 6

    write_coco(in_tmp / "coco", broken={"index": 5, "set": {"bbox": "wide"}})
    with pytest.raises(AnnotationError, match=r"annotations\.json: annotations\[5\] \(id=6\): bbox"):
        run_pull(in_tmp / "p.yaml")
    assert _snapshot(out) == before                             # nothing already written is lost


def test_cli_reports_errors_with_exit_code_2(in_tmp, capsys):
    _params(in_tmp / "params.yaml", {"source": "coco", "coco": {"annotations": "x.json", "images_dir": "."}})
    assert cli(["pull"]) == 2
    assert "params.yaml: pull.coco.annotations: file not found (got 'x.json')" in capsys.readouterr().err
