"""The evaluate flow holds no structure that grows with the dataset beyond a few small columns (issue 23): the miss
types decode one batch of images at a time, the metrics / errors tables are streamed shard by shard, and the result
store answers a lookup without copying its whole index."""
from __future__ import annotations

import weakref
from types import SimpleNamespace

from flows import evaluate as flow

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from detection.datasets.tables import SCHEMAS, rows_to_table, write_table_atomic
from tasks import audit_slices
from tasks.result_store import ResultStore
from tasks.shards import mark_done


class _Live:
    """Decoded images still referenced somewhere (weakref-tracked), and the most alive at a detector call."""

    def __init__(self):
        self.alive, self.peak, self.batches, self.loads = 0, 0, [], []

    def load(self, img, stage, device, errors):
        self.loads.append(img["image_id"])
        if img["image_id"] == "bad":
            errors.append({"image_id": "bad"})
            return None
        h, w = img["size"]
        t = torch.zeros(3, h, w)
        self.alive += 1
        weakref.finalize(t, self._gone)
        return t

    def _gone(self):
        self.alive -= 1


def test_miss_type_candidates_decode_one_batch_at_a_time_in_the_same_batches(monkeypatch):
    live = _Live()
    sizes = [(8, 8), (8, 10), (8, 8), (8, 8), (8, 10), (8, 8), (8, 8)]
    images = [{"image_id": f"i{k}", "uri": f"i{k}.png", "size": s} for k, s in enumerate(sizes)]
    images.insert(3, {"image_id": "bad", "uri": "bad.png", "size": (8, 8)})

    class Detector:
        class_names = ["person"]

        def candidates(self, batch):
            live.peak = max(live.peak, live.alive)
            live.batches.append(tuple(batch.shape))
            return batch.shape[0]

    monkeypatch.setattr(audit_slices, "load_image", live.load)
    monkeypatch.setattr(audit_slices, "detector_model", lambda *a: Detector())
    monkeypatch.setattr(audit_slices, "person_candidates", lambda cands, b, person: (b, cands))
    spec = SimpleNamespace(model_dump_json=lambda: "{}", person_class="person")
    params = SimpleNamespace(explain_detector=lambda: spec, explain=SimpleNamespace(device="cpu", chunk_size=2))
    errors: list[dict] = []
    out = audit_slices._candidates(params, images, errors)
    # batches by image size in first-appearance order, chunk_size images each: what holding every image gave
    assert live.batches == [(2, 3, 8, 8), (2, 3, 8, 8), (1, 3, 8, 8), (2, 3, 8, 10)]
    assert out == {"i0": (0, 2), "i2": (1, 2), "i3": (0, 2), "i5": (1, 2), "i6": (0, 1), "i1": (0, 2),
                   "i4": (1, 2)}
    assert errors == [{"image_id": "bad"}]                 # the unreadable image: one errors row, no entry
    assert live.peak <= 2                                  # never more than one batch of decoded images alive


def _shard(root, i: int, metrics: list[dict], errors: list[dict], agreement: list[dict] | None,
           done: bool = True) -> str:
    d = root / "_shards" / f"shard-{i:05d}"
    d.mkdir(parents=True)
    write_table_atomic(rows_to_table(metrics, "metrics"), d / "metrics.parquet")
    write_table_atomic(rows_to_table(errors, "errors"), d / "errors.parquet")
    if agreement is not None:
        write_table_atomic(rows_to_table(agreement, "metrics"), d / "agreement.parquet")
    if done:
        mark_done(d.parent, d.name)
    return str(d)


def _metric(i: int, metric: str = "pointing_box") -> dict:
    return {"image_id": f"img{i}", "target_id": "t", "kind": "persons", "job": "j", "metric": metric,
            "value": float(i)}


def _error(i: int, error_type: str = "unreadable") -> dict:
    return {"stage": "evaluate", "uri": f"u{i}", "image_id": f"img{i}", "error_type": error_type, "message": "m"}


def test_metrics_and_errors_are_streamed_in_shard_order_then_agreement_and_extra_rows(tmp_path):
    dirs = [_shard(tmp_path, 0, [_metric(0), _metric(1)], [_error(0, "nonfinite_saliency")], [_metric(0, "agree:k")]),
            _shard(tmp_path, 1, [_metric(2)], [_error(2)], None),
            _shard(tmp_path, 2, [_metric(9)], [_error(9)], None, done=False),       # unfinished: skipped
            _shard(tmp_path, 3, [_metric(3)], [], [_metric(3, "agree:k")])]
    summary = flow._write_metrics(tmp_path / "metrics.parquet", dirs)
    whole = pq.read_table(tmp_path / "metrics.parquet")
    assert whole.to_pylist() == [_metric(0), _metric(1), _metric(2), _metric(3), _metric(0, "agree:k"),
                                 _metric(3, "agree:k")]
    assert whole.schema == SCHEMAS["metrics"]
    assert summary.column_names == flow.SUMMARY_COLUMNS and summary.num_rows == 6
    assert pa.types.is_dictionary(summary.schema.field("metric").type)
    extra = [_error(7, "nonfinite_saliency")]
    assert flow._write_errors(tmp_path / "errors.parquet", dirs, extra) == (3, 2)
    assert [r["image_id"] for r in pq.read_table(tmp_path / "errors.parquet").to_pylist()] == ["img0", "img2", "img7"]


def test_the_flow_reads_only_small_explanation_columns():
    assert "saliency" not in flow.FLOW_COLUMNS and "options" not in flow.FLOW_COLUMNS
    assert set(flow.FLOW_COLUMNS) <= set(SCHEMAS["explanations"].names)


def test_a_store_lookup_returns_only_the_asked_keys(tmp_path):
    store = ResultStore(tmp_path, "evaluate", ("metrics",))
    table = rows_to_table([_metric(0)], "metrics")
    store.put_many({f"{k:064x}": {"metrics": table} for k in range(50)})
    wanted = {f"{k:064x}" for k in (3, 7)} | {"f" * 64}
    assert set(store._locate(wanted)) == {f"{k:064x}" for k in (3, 7)}
    assert set(store.get_many(wanted)) == {f"{k:064x}" for k in (3, 7)}


def test_summaries_of_a_metrics_file_of_several_row_groups(tmp_path):
    """Each row group of a Parquet file has its own dictionaries; the flow's dictionary-encoded summary columns must
    still group (found at 20k images: > 65,536 metric rows) and give what the plain strings give."""
    from tasks.evaluate_summary import summarise

    n = 600
    table = pa.table({"kind": ["persons"] * 300 + ["classes"] * 300,
                      "job": ["rise"] * 250 + ["occlusion@parts"] * 350,
                      "metric": [["deletion_auc", "insertion_auc", "pointing_game"][i % 3] for i in range(n)],
                      "value": [float(i % 7) for i in range(n)]})
    path = tmp_path / "metrics.parquet"
    pq.write_table(table, path, row_group_size=128)              # 5 row groups whose dictionaries differ
    assert pq.ParquetFile(path).metadata.num_row_groups == 5
    assert summarise(flow.summary_columns(path)) == summarise(table)
