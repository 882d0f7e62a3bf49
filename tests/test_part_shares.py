"""Body-part shares are one definition (tasks.part_shares) that the report (long table), the evaluate stage's part
plot / summary (means per job and part) and where it fails (wide table) all read: on awkward rows they agree with a
per-target reference and with each other. Before, a NaN value made the report drop the whole target and the
evaluate mean of every part of the job NaN."""
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from tasks.audit_slices import part_shares as wide_part_shares
from tasks.audit_slices import share_column
from tasks.evaluate_summary import _part_shares as mean_part_shares
from tasks.part_shares import part_shares
from tasks.report import part_shares as report_part_shares

ROWS = [  # image, target, kind, job, names, relevance
    ("a", "1", "persons", "j", ["head", "torso", "legs"], [0.5, -0.25, 0.25]),
    ("a", "2", "persons", "j", ["head", "torso", "legs"], [np.nan, 1.0, 3.0]),       # NaN: its region only
    ("b", "3", "persons", "j", ["head", "torso"], [0.0, 0.0]),                      # zero total: shares 0
    ("b", "4", "persons", "j", ["legs", "head"], [1.0, 2.0, 5.0]),                  # extra value: total only
    ("b", "5", "persons", "j", ["head", "head", "torso"], [1.0, 3.0, -4.0]),        # repeated name: last value
    ("c", "6", "persons", "j", ["torso", None, "arms"], [1.0, 5.0, 2.0]),           # null name: total only
    ("c", "6b", "persons", "j", [None, "torso"], [1.0, 1.0]),    # its null name must not erase 6's "arms"
    ("c", "7", "detections", "j", ["head"], [2.0]),                                 # another non-class kind
    ("c", "8", "classes", "j", ["head"], [1.0]),                                    # classes: never
    ("c", "9", "persons", "j", ["head"], None),                                     # no relevance: skipped
    ("d", "10", "persons", "k", ["head", "torso"], [1.0, 3.0]),
]


def _table() -> pa.Table:
    cols = list(zip(*ROWS))
    return pa.table({"image_id": list(cols[0]), "target_id": list(cols[1]), "kind": list(cols[2]),
                     "job": list(cols[3]), "region_names": pa.array(list(cols[4]), pa.list_(pa.string())),
                     "relevance": pa.array([None if r is None else [float(v) for v in r] for r in cols[5]],
                                           pa.list_(pa.float32()), from_pandas=True)})


def _reference(kinds=("persons", "detections")) -> pd.DataFrame:
    rows = []
    for image, target, kind, job, names, rel in ROWS:
        if kind not in kinds or rel is None or not names:
            continue
        rel = np.asarray(rel, float)
        total = np.nansum(np.abs(rel)) or 1.0
        last = {n: v / total for n, v in zip(names, rel) if n is not None}
        rows += [(image, target, job, n, v) for n, v in last.items()]
    return pd.DataFrame(rows, columns=["image_id", "target_id", "job", "part", "share"])


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values(["image_id", "target_id", "job", "part"]).reset_index(drop=True)


def test_long_table_equals_the_per_target_reference_from_arrow_and_from_pandas():
    want = _sorted(_reference())
    for source in (_table(), _table().to_pandas()):
        got = _sorted(part_shares(source).long())
        pd.testing.assert_frame_equal(got, want, check_dtype=False)
    # the NaN value's target keeps its other regions, over the nansum of the others
    t2 = want[want["target_id"] == "2"].set_index("part")["share"]
    assert np.isnan(t2["head"]) and t2["torso"] == pytest.approx(0.25) and t2["legs"] == pytest.approx(0.75)


def test_report_evaluate_and_where_it_fails_read_the_same_shares():
    table = _table()
    frame = table.to_pandas()
    targets = pd.DataFrame({"image_id": frame["image_id"], "target_id": frame["target_id"], "kind": frame["kind"],
                            "height": 100.0, "occlusion": 0.0, "found": True, "score": 0.9})
    report = report_part_shares(frame, targets)
    want = _reference()
    pd.testing.assert_frame_equal(_sorted(report[list(want.columns)]), _sorted(want), check_dtype=False)

    means = mean_part_shares(table)
    expected = want.groupby(["job", "part"])["share"].mean()       # pandas skips the NaN share
    assert set(means) == set(expected.index)
    for key, value in expected.items():
        assert means[key] == pytest.approx(value)
    assert np.isfinite(means[("j", "head")])                       # one NaN no longer empties the job's mean

    wide = wide_part_shares(table, "j").set_index("ann_id")
    persons = _reference(kinds=("persons",))
    persons = persons[persons["job"] == "j"]
    for r in persons.itertuples():
        got = wide.loc[r.target_id, share_column(r.part)]
        assert (np.isnan(got) and np.isnan(r.share)) or got == pytest.approx(r.share)
    assert "7" not in wide.index                                    # where it fails: persons only


def test_job_and_kind_filters_and_empty_inputs():
    only_k = part_shares(_table(), job="k")
    assert only_k.parts == ["head", "torso"] and only_k.share == pytest.approx([0.25, 0.75])
    assert part_shares(_table(), kinds=("classes",)).long()["target_id"].tolist() == ["8"]
    assert part_shares(_table(), kinds="classes").long()["target_id"].tolist() == ["8"]   # a str is one kind
    empty = part_shares(_table(), job="absent")
    assert empty.targets.num_rows == 0 and empty.long().empty and empty.wide().shape == (0, 0)
    no_regions = _table().to_pandas().assign(region_names=None)
    assert part_shares(no_regions).long().empty
    with pytest.raises(KeyError, match="relevance"):
        part_shares(_table().drop(["relevance"]))
