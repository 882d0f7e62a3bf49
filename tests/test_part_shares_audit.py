"""Where it fails' part shares (tasks.audit_slices.part_shares, vectorised over the flattened relevance lists) equal
a per-target reference on awkward rows: null and NaN values, infinities, an all-zero target, a target with more
values than names, a repeated region name, a null region name (its value counts in the total only), and rows that
are skipped (no relevance, no names, another job or kind)."""
import numpy as np
import pandas as pd
import pyarrow as pa

from tasks.audit_slices import default_part_job, part_shares, share_column


def _reference(table: pa.Table, job: str) -> pd.DataFrame:
    rows = []
    for r in table.to_pylist():
        if r["job"] != job or r["kind"] != "persons" or r["relevance"] is None or not r["region_names"]:
            continue
        rel = np.array([np.nan if v is None else v for v in r["relevance"]], float)
        total = np.nansum(np.abs(rel)) or 1.0
        rows.append({"image_id": r["image_id"], "ann_id": r["target_id"],
                     **{share_column(n): v / total for n, v in zip(r["region_names"], rel) if n is not None}})
    return pd.DataFrame(rows)


def _table() -> pa.Table:
    rows = [  # (image, target, kind, job, method, names, relevance)
        ("a", "1", "persons", "shap@parts", "kernel_shap", ["head", "torso", "legs"], [0.5, -0.25, 0.25]),
        ("a", "2", "persons", "shap@parts", "kernel_shap", ["head", "torso", "legs"], [None, 1.0, np.nan]),
        ("b", "3", "persons", "shap@parts", "kernel_shap", ["head", "torso"], [0.0, 0.0]),
        ("b", "4", "persons", "shap@parts", "kernel_shap", ["legs", "head", "arms"], [1.0, 2.0, 3.0, 4.0]),
        ("b", "5", "persons", "shap@parts", "kernel_shap", ["head", "head", "torso"], [1.0, 3.0, -4.0]),
        ("c", "6", "persons", "shap@parts", "kernel_shap", ["head", "torso"], [np.inf, 1.0]),
        ("c", "6b", "persons", "shap@parts", "kernel_shap", ["torso", None, "arms"], [1.0, 5.0, 2.0]),
        ("c", "7", "persons", "shap@parts", "kernel_shap", ["head", "torso"], None),
        ("c", "8", "persons", "shap@parts", "kernel_shap", [], [1.0]),
        ("c", "9", "persons", "shap@parts", "kernel_shap", None, [1.0]),
        ("d", "10", "persons", "occlusion@parts", "occlusion", ["head", "torso"], [1.0, 1.0]),
        ("d", "11", "classes", "shap@parts", "kernel_shap", ["head"], [1.0]),
        ("d", "12", "persons", "shap@parts", "kernel_shap", ["context"] + [f"p{i}" for i in range(11)],
         list(np.random.default_rng(0).normal(size=12))),
    ]
    cols = list(zip(*rows))
    return pa.table({"image_id": cols[0], "target_id": cols[1], "kind": cols[2], "job": cols[3], "method": cols[4],
                     "region_names": pa.array(cols[5], pa.list_(pa.string())),
                     "relevance": pa.array(cols[6], pa.list_(pa.float64()))})


def test_part_shares_equal_a_per_target_reference():
    table = _table()
    for chunked in (table, pa.concat_tables([table.slice(0, 5), table.slice(5)])):   # sliced list offsets
        got, want = part_shares(chunked, "shap@parts"), _reference(table, "shap@parts")
        assert list(got.columns) == list(want.columns)
        assert got["ann_id"].tolist() == ["1", "2", "3", "4", "5", "6", "6b", "12"]
        pd.testing.assert_frame_equal(got, want, check_exact=True)


def test_part_shares_of_a_job_without_rows_is_empty_with_the_keys():
    got = part_shares(_table(), "rise@parts")
    assert got.empty and list(got.columns) == ["image_id", "ann_id"]


def test_default_part_job_prefers_the_first_shapley_job():
    table = _table()
    later = pa.concat_tables([table.filter(pa.compute.equal(table["job"], "occlusion@parts")), table])
    assert default_part_job(later) == "shap@parts"
    assert default_part_job(later.filter(pa.compute.equal(later["job"], "occlusion@parts"))) == "occlusion@parts"
    assert default_part_job(later.filter(pa.compute.equal(later["kind"], "classes"))) is None


def _one(names, relevance) -> pa.Table:
    return pa.table({"image_id": ["a"], "target_id": ["1"], "kind": ["persons"], "job": ["j"], "method": ["m"],
                     "region_names": pa.array([names], pa.list_(pa.string())),
                     "relevance": pa.array([relevance], pa.list_(pa.float64()))})


def test_part_shares_of_one_target_on_degenerate_lists_equal_the_reference():
    # no values (keys only), one region, all NaN (NaN shares), only a null name (keys only)
    for names, relevance in ((["head"], []), (["head"], [2.0]), (["head", "torso"], [np.nan, np.nan]),
                             ([None], [1.0])):
        table = _one(names, relevance)
        got, want = part_shares(table, "j"), _reference(table, "j")
        assert list(got.columns) == list(want.columns) and len(got) == 1
        pd.testing.assert_frame_equal(got, want, check_exact=True)
