"""The evaluate stage's method agreement (tasks.evaluate.agreement_rows) on hand-built explanations: Spearman rank
correlation and 'same top part' over the body parts two jobs share, matched by name, with hand-computed values."""
import math

import pyarrow as pa
import pytest

from tasks.evaluate import agreement_rows


def _exp(job: str, names: list[str], relevance: list[float] | None, target: str = "p1", kind: str = "persons"):
    return {"image_id": "img", "target_id": target, "kind": kind, "job": job, "region_names": names,
            "relevance": relevance}


PARTS = ["head", "torso", "left_arm", "right_arm", "legs"]


def test_agreement_values_over_the_parts_two_jobs_share_matched_by_name():
    table = pa.Table.from_pylist([
        # listed out of job order; b names its parts in another order and has one a lacks (its most relevant)
        _exp("b@parts", ["legs", "head", "torso", "context", "left_arm", "right_arm"], [0.1, 0.8, 0.3, 5.0, 0.05, 0.6]),
        _exp("a@parts", PARTS, [0.9, 0.1, 0.5, 0.3, 0.2]),
        _exp("c@parts", PARTS, [0.2, 0.2, 0.9, 0.1, 0.5]),
        _exp("rise", PARTS, None),                                    # no relevance: not compared
        _exp("a@parts", PARTS, [0.1, 0.2, 0.3, 0.4, 0.5], kind="classes", target="person"),   # classes: not either
        _exp("b@parts", PARTS, [0.5, 0.4, 0.3, 0.2, 0.1], kind="classes", target="person"),
        _exp("a@parts", ["head", "torso", "legs"], [1.0, 2.0, 3.0], target="p2"),              # 2 parts in common
        _exp("b@parts", ["head", "torso", "arms"], [3.0, 2.0, 1.0], target="p2"),
    ])
    rows = agreement_rows(table)
    got = {(r["target_id"], r["job"], r["metric"]): r["value"] for r in rows}
    assert all(r["image_id"] == "img" and r["kind"] == "persons" for r in rows)
    # a vs b over head, torso, left_arm, right_arm, legs: a = (.9, .1, .5, .3, .2) -> ranks (4, 0, 3, 2, 1),
    # b = (.8, .3, .05, .6, .1) -> (4, 2, 0, 3, 1); sum d^2 = 0 + 4 + 9 + 1 + 0 = 14: rho = 1 - 6 * 14 / 120 = 0.3.
    # Both rank the head first (b's 'context' is not a shared part).
    # a vs c: c = (.2, .2, .9, .1, .5) -> ranks (1.5, 1.5, 4, 0, 3) (a tie shares its mean rank); the correlation
    # of the ranks: deviations (2, -2, 1, 0, -1) and (-.5, -.5, 2, -2, 1): 1 / sqrt(10 * 9.5). Top: head vs left arm.
    # b vs c: b's ranks (4, 2, 0, 3, 1) and c's: deviations (2, 0, -2, 1, -1), (-.5, -.5, 2, -2, 1): -8 / sqrt(95).
    assert got == pytest.approx({
        ("p1", "a@parts", "agree:b@parts"): 0.3,
        ("p1", "a@parts", "top_part_match:b@parts"): 1.0,
        ("p1", "a@parts", "agree:c@parts"): 1 / math.sqrt(95),
        ("p1", "a@parts", "top_part_match:c@parts"): 0.0,
        ("p1", "b@parts", "agree:c@parts"): -8 / math.sqrt(95),
        ("p1", "b@parts", "top_part_match:c@parts"): 0.0,
    }, abs=1e-12)


def test_identical_and_reversed_rankings_agree_fully_and_not_at_all():
    table = pa.Table.from_pylist([
        _exp("a@parts", PARTS, [5.0, 4.0, 3.0, 2.0, 1.0]),
        _exp("b@parts", PARTS[::-1], [0.1, 0.2, 0.3, 0.4, 0.5]),          # the same order, listed backwards
        _exp("c@parts", PARTS, [1.0, 2.0, 3.0, 4.0, 50.0]),                 # reversed (not linearly)
    ])
    got = {(r["job"], r["metric"]): r["value"] for r in agreement_rows(table)}
    assert got == pytest.approx({("a@parts", "agree:b@parts"): 1.0, ("a@parts", "top_part_match:b@parts"): 1.0,
                                 ("a@parts", "agree:c@parts"): -1.0, ("a@parts", "top_part_match:c@parts"): 0.0,
                                 ("b@parts", "agree:c@parts"): -1.0, ("b@parts", "top_part_match:c@parts"): 0.0})
