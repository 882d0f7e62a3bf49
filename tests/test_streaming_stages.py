"""Flat-memory pieces of the pull / infer / parts stages: streamed table writing (same rows, order and - below a
row group - bytes as writing the concatenated table), tasks reading their own rows, the streamed COCO export, and
metrics computed with Arrow equal to the row-by-row ones."""
import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from detection.datasets.coco import tables_to_coco
from detection.datasets.synthetic import CATEGORIES, SyntheticConfig, generate_images_with_attributes
from detection.datasets.tables import SCHEMAS, rows_to_table, write_table_atomic
from detection.evaluation import SIZE_BUCKETS
from tasks.infer import classifier_quality, detector_quality, quality, spurious_probe
from tasks.params import InferParams
from tasks.parts import PartIouStats, quality_metrics
from tasks.pull import CocoStream
from tasks.shards import (
    SHARDS_DIR,
    RowRange,
    TableWriter,
    collect_staged,
    read_image_rows,
    read_rows,
    row_ranges,
    staged_shard_dir,
    write_shard,
    write_staged,
)


def _errors(n: int, start: int = 0) -> pa.Table:
    return rows_to_table([{"stage": "pull", "image_id": f"img-{i:05d}", "uri": f"x/{i}.png", "error_type": "t",
                           "message": "m" * (i % 7)} for i in range(start, start + n)], "errors")


def _pieces(sizes):
    out, start = [], 0
    for n in sizes:
        out.append(_errors(n, start))
        start += n
    return out


@pytest.mark.parametrize("sizes", [[5, 0, 17, 3], [25], [1] * 25])
def test_table_writer_writes_the_bytes_of_the_whole_table_whatever_the_pieces(tmp_path, sizes):
    whole = write_table_atomic(pa.concat_tables(_pieces(sizes)), tmp_path / "whole.parquet")
    with TableWriter(tmp_path / "streamed.parquet", "errors") as writer:
        for piece in _pieces(sizes):
            writer.write(piece)
    assert writer.num_rows == 25
    assert (tmp_path / "streamed.parquet").read_bytes() == whole.read_bytes()
    assert not list(tmp_path.glob(".*.tmp"))


def test_table_writer_cuts_fixed_row_groups_and_writes_an_empty_table_as_pq_does(tmp_path):
    for sizes in ([4, 9, 1, 6], [20]):
        with TableWriter(tmp_path / f"{len(sizes)}.parquet", "errors", row_group_rows=8) as writer:
            for piece in _pieces(sizes):
                writer.write(piece)
    a, b = (pq.ParquetFile(tmp_path / f"{k}.parquet") for k in (4, 1))
    assert [a.metadata.row_group(g).num_rows for g in range(a.metadata.num_row_groups)] == [8, 8, 4]
    assert (tmp_path / "4.parquet").read_bytes() == (tmp_path / "1.parquet").read_bytes()
    assert pq.read_table(tmp_path / "4.parquet").equals(pa.concat_tables(_pieces([20])))
    with TableWriter(tmp_path / "empty.parquet", "errors"):
        pass
    whole = write_table_atomic(SCHEMAS["errors"].empty_table(), tmp_path / "empty_whole.parquet")
    assert (tmp_path / "empty.parquet").read_bytes() == whole.read_bytes()


def test_table_writer_leaves_nothing_when_the_writing_fails(tmp_path):
    with pytest.raises(RuntimeError), TableWriter(tmp_path / "t.parquet", "errors") as writer:
        writer.write(_errors(3))
        raise RuntimeError("shard unreadable")
    assert list(tmp_path.iterdir()) == []


def test_write_staged_equals_collect_staged_and_skips_unfinished_shards(tmp_path):
    def staging(name):
        root = tmp_path / name
        dirs = [write_shard(staged_shard_dir(root, i), errors=_errors(n, 10 * i).to_pylist())
                for i, n in enumerate([3, 0, 5])]
        half = root / SHARDS_DIR / "shard-00009"                  # written, never marked done
        half.mkdir(parents=True)
        write_table_atomic(_errors(2, 90), half / "errors.parquet")
        return root, [*dirs, str(half)]

    root, dirs = staging("old")
    tables = collect_staged(root, dirs, ("errors", "metrics"))
    for name, table in tables.items():
        write_table_atomic(table, root / f"{name}.parquet")
    root2, dirs2 = staging("new")
    seen = []
    counts = write_staged(root2, dirs2, {n: root2 / f"{n}.parquet" for n in ("errors", "metrics")},
                          lambda name, t: seen.append((name, t.num_rows)))
    assert counts == {"errors": 8, "metrics": 0}
    assert seen == [("errors", 3), ("errors", 0), ("errors", 5)]
    for name in ("errors", "metrics"):
        assert (root2 / f"{name}.parquet").read_bytes() == (root / f"{name}.parquet").read_bytes()
    assert not (root2 / SHARDS_DIR).exists()


def test_tasks_read_their_own_rows_by_range_and_by_image_id(tmp_path):
    table = _errors(50)
    path = tmp_path / "t.parquet"
    with TableWriter(path, "errors", row_group_rows=8) as writer:
        writer.write(table)
    ranges = row_ranges(path, 12)
    assert [(r.start, r.stop) for r in ranges] == [(0, 12), (12, 24), (24, 36), (36, 48), (48, 50)]
    assert pa.concat_tables([read_rows(r) for r in ranges]).equals(table)
    assert read_rows(RowRange(str(path), 7, 9), ["image_id"]).column(0).to_pylist() == ["img-00007", "img-00008"]
    assert read_rows(RowRange(str(path), 50, 50)).num_rows == 0
    ids = ["img-00031", "img-00002", "img-00017", "nowhere"]
    got = read_image_rows(path, ids, columns=["image_id", "message"])
    assert got.column_names == ["image_id", "message"]
    assert got["image_id"].to_pylist() == ["img-00002", "img-00017", "img-00031"]      # file order
    assert read_image_rows(path, []).num_rows == 0
    with pytest.raises(KeyError, match="no image_id column"):
        read_image_rows(write_table_atomic(pa.table({"x": [1]}), tmp_path / "x.parquet"), ["a"])


def test_coco_stream_is_byte_identical_to_the_whole_export(tmp_path):
    cfg = SyntheticConfig(n_images=7, width=96, height=72, persons_per_image=[0, 3])
    images, annotations = [], []
    shards = []
    for r in (range(0, 3), range(3, 4), range(4, 7)):
        im, ann, _, _ = generate_images_with_attributes(cfg, 0, r, str(tmp_path / "img"), uri_prefix="data/x")
        shards.append((rows_to_table(im, "images"), rows_to_table(ann, "annotations")))
        images += im
        annotations += ann
    whole = json.dumps(tables_to_coco(rows_to_table(images, "images"), rows_to_table(annotations, "annotations"),
                                      list(CATEGORIES)), separators=(",", ":"))
    stream = CocoStream(tmp_path / "coco.json", list(CATEGORIES))
    for im, ann in shards:
        stream.add(im, ann)
    assert stream.close().read_text() == whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coco.json", "img"]


def _quality_tables(seed: int = 0):
    rng = np.random.default_rng(seed)
    images, anns, dets, preds = [], [], [], []
    for i in range(30):
        image_id = f"im{(i * 7) % 30:03d}"                        # not in id order
        images.append({"image_id": image_id, "split": "val" if i % 3 else "train",
                       "labels": None if i % 5 == 0 else (["bicycle"] if i % 2 else ["person"]),
                       "spurious_cue": None if i % 7 == 0 else bool(i % 2)})
        for k in range(rng.integers(0, 4)):
            x, y, h = rng.uniform(0, 200), rng.uniform(0, 100), rng.uniform(10, 120)
            kps = None if k == 2 else [v for _ in range(17) for v in (x + rng.uniform(0, h / 2), y + rng.uniform(0, h),
                                                                       2.0)]
            anns.append({"image_id": image_id, "ann_id": f"{image_id}:{k}", "category": "person" if k < 3 else "car",
                         "bbox": [x, y, x + h / 2, y + h], "iscrowd": bool(k == 1 and i % 4 == 0),
                         "occlusion": None if k == 0 else float(rng.uniform()), "keypoints": kps,
                         "num_keypoints": 17 if kps else 0})
            for model in ("det", "pose"):
                for j in range(2):
                    jit = rng.normal(0, 5, 4)
                    dets.append({"model_id": model, "image_id": image_id, "det_id": f"{model}{image_id}{k}{j}",
                                 "category": "person", "score": float(rng.uniform()), "above_conf": True,
                                 "bbox": list(np.array([x, y, x + h / 2, y + h]) + jit),
                                 "keypoints": [v + rng.normal(0, 3) for v in kps] if model == "pose" and kps
                                 else None})
        for c in ("person", "bicycle", "car"):
            if i != 4:                                               # one image without predictions
                preds.append({"image_id": image_id, "category": c, "score": float(rng.uniform())})
    rng.shuffle(dets)
    return (rows_to_table(images, "images"), rows_to_table(anns, "annotations"), rows_to_table(dets, "detections"),
            rows_to_table(preds, "predictions"))


def test_infer_quality_with_arrow_equals_the_row_by_row_metrics():
    images, anns, dets, preds = _quality_tables()
    infer = InferParams(detectors=[{"id": "det", "kind": "yolo", "weights": "x.pt"}],
                        pose={"id": "pose", "kind": "yolo", "weights": "p.pt"},
                        classifier={"id": "clf", "kind": "saved", "weights": "c.pt"})
    got = quality(images, anns, dets, preds, infer, "bicycle")
    img_rows, ann_rows, det_rows = images.to_pylist(), anns.to_pylist(), dets.to_pylist()
    splits = {"val": [r for r in img_rows if r["split"] == "val"], "all": img_rows}
    for spec in (infer.detectors[0], infer.pose):
        gt, by_image = {}, {}
        for a in ann_rows:
            if a["category"] == "person":
                gt.setdefault(a["image_id"], []).append(a)
        for d in det_rows:
            if d["model_id"] == spec.id:
                by_image.setdefault(d["image_id"], []).append(d)
        for name, rows in splits.items():
            want = detector_quality(rows, gt, by_image, spec.conf, infer, spec is infer.pose)
            assert json.dumps(got[spec.id][name], sort_keys=True) == \
                json.dumps(want, sort_keys=True).replace("NaN", "null")
    assert got["pose"]["all"]["pck02_keypoints"] > 0
    probs = {}
    for r in preds.to_pylist():
        probs.setdefault(r["image_id"], {})[r["category"]] = r["score"]
    classes = ["person", "bicycle", "car"]
    for name, rows in splits.items():
        assert got["clf"][name] == classifier_quality(rows, probs, classes)
    assert got["clf"]["spurious"] == spurious_probe(img_rows, probs, "bicycle")


def test_part_iou_stats_over_pieces_equal_the_whole_table_means():
    rng = np.random.default_rng(1)
    rows = [{"image_id": f"i{p // 3}", "ann_id": f"a{p}", "source": ["gt", "pose", "template"][p % 3],
             "part": part, "iou": None if (p + k) % 11 == 0 else float(np.float32(rng.uniform())),
             "iou_amodal": float(np.float32(rng.uniform())), "box_height": float(10 + p * 3), "occlusion": 0.0}
            for p in range(40) for k, part in enumerate(["head", "torso", "legs"])]
    table = rows_to_table(rows, "part_iou")
    stats = PartIouStats(50.0)
    for start in range(0, table.num_rows, 18):        # pieces of whole images (2 x 3 persons x 3 parts), as shards
        stats.add(table.slice(start, 18))
    got, whole = stats.result(), quality_metrics(table, 50.0)
    for source in ("gt", "pose", "template"):
        sel = [r for r in rows if r["source"] == source]
        iou = np.array([r["iou"] or 0.0 for r in sel])
        tall = np.array([r["box_height"] >= 50 for r in sel])
        want = {"persons": len({r["ann_id"] for r in sel}), "mean_iou": iou.mean(),
                "mean_iou_amodal": np.mean([r["iou_amodal"] for r in sel]), "mean_iou_tall": iou[tall].mean(),
                "per_part": {p: iou[[r["part"] == p for r in sel]].mean() for p in ("head", "torso", "legs")}}
        height = np.array([r["box_height"] for r in sel])
        want["by_size"] = {b: iou[(height >= lo) & (height < hi)].mean() for b, (lo, hi) in SIZE_BUCKETS.items()
                           if ((height >= lo) & (height < hi)).any()}
        for result in (got[source], whole[source]):
            assert result["persons"] == want["persons"]
            for key in ("mean_iou", "mean_iou_amodal", "mean_iou_tall"):
                assert result[key] == pytest.approx(want[key], rel=1e-12)
            assert result["per_part"] == pytest.approx(want["per_part"], rel=1e-12)
            assert result["by_size"] == pytest.approx(want["by_size"], rel=1e-12)


def test_quality_reads_back_through_the_written_files_unchanged(tmp_path):
    images, anns, dets, preds = _quality_tables(2)
    infer = InferParams(detectors=[{"id": "det", "kind": "yolo", "weights": "x.pt"}])
    files = {}
    for name, t in (("images", images), ("annotations", anns), ("detections", dets), ("predictions", preds)):
        buf = io.BytesIO()
        pq.write_table(t, buf)
        files[name] = tmp_path / f"{name}.parquet"
        files[name].write_bytes(buf.getvalue())
    from tasks.infer import quality_from_files

    assert quality_from_files(files, infer, None) == quality(images, anns, dets, preds, infer, None)


def test_detection_metrics_from_shard_partials_equal_detection_evaluation():
    from detection.evaluation import COCO_IOUS, OCCLUSION_BUCKETS, ImageEval, average_precision, coco_ap, recall_by
    from tasks.infer import _ImageRows, finish_quality, match_partial

    images, anns, dets, _ = _quality_tables(3)
    infer = InferParams()
    per_image, evals = [], []
    for image_id in images["image_id"].to_pylist():
        g = [a for a in anns.to_pylist() if a["image_id"] == image_id and a["category"] == "person"]
        d = [x for x in dets.to_pylist() if x["image_id"] == image_id and x["model_id"] == "det"]
        per_image.append(_ImageRows.from_dicts(g, d))
        im = per_image[-1]
        h = im.g_boxes[:, 3] - im.g_boxes[:, 1]
        evals.append(ImageEval(im.d_boxes, im.scores, im.g_boxes, im.crowd, {"height": h, "occlusion": im.occl}))
    chunks = [match_partial(per_image[a:a + 7], 0.25, infer, False) for a in range(0, len(per_image), 7)]
    got = finish_quality(chunks, 0.25, False)
    assert got["ap50"] == average_precision(evals) and got["ap"] == coco_ap(evals) and len(COCO_IOUS) == 10
    want = recall_by(evals, "occlusion", OCCLUSION_BUCKETS, min_score=0.25)
    assert json.dumps(got["recall_by_occlusion"]) == json.dumps(want)
    assert got["images"] == 30 and got["persons"] == sum(int((~im.crowd).sum()) for im in per_image)


def test_parts_tasks_read_the_same_items_the_flow_used_to_build(tmp_path):
    from tasks.params import parse_params
    from tasks.parts import PartsShard, shard_inputs

    cfg = SyntheticConfig(n_images=9, width=96, height=72, persons_per_image=[0, 3])
    im, ann, parts, _ = generate_images_with_attributes(cfg, 0, range(9), str(tmp_path / "img"))
    tables = {"images": rows_to_table(im, "images"), "annotations": rows_to_table(ann, "annotations"),
              "gt_parts": rows_to_table(parts, "gt_parts")}
    persons = tables["annotations"].filter(pa.compute.equal(tables["annotations"]["category"], "person")).to_pylist()
    dets = [{"model_id": m, "image_id": a["image_id"], "det_id": f"{m}{k}", "category": "person", "score": 0.9,
             "above_conf": k % 3 != 0, "bbox": a["bbox"], "class_probs": [0.9], "keypoints": None}
            for k, a in enumerate(persons) for m in ("det", "pose", "other")]
    tables["detections"] = rows_to_table(dets[::-1], "detections")
    files = {}
    for name, table in tables.items():
        with TableWriter(tmp_path / f"{name}.parquet", name, row_group_rows=5) as writer:
            writer.write(table)
        files[name] = tmp_path / f"{name}.parquet"
    params = parse_params({"infer": {"detectors": [{"id": "det", "kind": "yolo", "weights": "x.pt"}],
                                     "pose": {"id": "pose", "kind": "yolo", "weights": "p.pt"}},
                           "parts": {"shard_size": 4}}, check_files=False)
    want = shard_inputs(params, tables["images"], tables["annotations"], tables["gt_parts"], tables["detections"])
    shards = PartsShard.plan(params, files["images"], files["annotations"], files["gt_parts"], files["detections"])
    assert [len(s.images) for s in shards] == [4, 4, 1]
    got = [item for shard in shards for item in shard.items()]
    assert got == want
    assert sum(len(i["detections"]) for i in got) and sum(len(i["pose"]) for i in got)
    assert sum(len(i["gt_parts"]) for i in got) == tables["gt_parts"].num_rows
