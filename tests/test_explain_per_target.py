"""Body-part jobs of a method that takes each target's own regions in one call (``per_target_regions``: RExL,
whose parts only summarise its map) in the explain stage: one call per image, each row its pedestrian's own parts in
its own order and the values of a one-pedestrian call; a pedestrian without parts is an errors row."""
from __future__ import annotations

import pytest
import torch

from tasks.explain import explain_targets, shares_forwards
from tasks.params import ExplainJob, ExplainParams
from tests.rexl_fixture import SHA, policy_file

H, W = 12, 12


class Scaled:
    """Score of target p<k> = k x the mean brightness of the image's left half; fingerprinted SHA."""

    device = torch.device("cpu")
    chunk_size = 64
    weights_sha256 = SHA

    def __init__(self, ids: list[str]):
        self.num_targets = len(ids)
        self.scales = torch.tensor([float(i[1:]) for i in ids])

    def __call__(self, images):
        return images[:, :, :, : images.shape[-1] // 2].mean((1, 2, 3))[:, None] * self.scales


def band(rows: slice) -> torch.Tensor:
    m = torch.zeros(H, W, dtype=torch.bool)
    m[rows, 1:11] = True
    return m


def test_a_rexl_parts_job_explains_an_images_pedestrians_in_one_call(tmp_path):
    job = ExplainJob(method="rexl", targets="detections", regions="parts",
                     options={"policy": str(policy_file(tmp_path))})
    assert shares_forwards(job)
    people = {"p1": {"torso": band(slice(4, 8)), "head": band(slice(0, 4)), "legs": torch.zeros(H, W, dtype=bool)},
              "p2": {},
              "p3": {"legs": band(slice(8, 12)), "head": band(slice(1, 3))}}
    targets = [{"image_id": "img", "target_id": t, "kind": "detections", "parts_model": "m", "parts_id": t}
               for t in people]
    image = torch.rand(3, H, W, generator=torch.Generator().manual_seed(0))

    def run(group, errors):
        return explain_targets(job, lambda ts: Scaled([t["target_id"] for t in ts]), image, group,
                               lambda t: people[t["target_id"]], ExplainParams(), 0, "cpu", errors, "img.png")

    errors: list[dict] = []
    rows = run(targets, errors)
    assert [r["target_id"] for r in rows] == ["p1", "p3"]
    assert [e["message"] for e in errors] == ["rexl@parts p2: no non-empty body part"]
    assert rows[0]["region_names"] == ["torso", "head"] and rows[1]["region_names"] == ["legs", "head"]
    n = 4                                                                    # the tiny policy's 2 x 2 cells
    assert all(r["n_forward"] == 2 + 2 * (n - 1) and r["shared_by"] == 2 for r in rows)
    for r in rows:
        alone = run([t for t in targets if t["target_id"] == r["target_id"]], [])[0]
        assert alone["n_forward"] == 2 + (n - 1) and alone["region_names"] == r["region_names"]
        assert alone["relevance"] == pytest.approx(r["relevance"], abs=1e-6)
        assert (alone["full_score"], alone["empty_score"]) == pytest.approx((r["full_score"], r["empty_score"]),
                                                                            abs=1e-6)
    assert rows[1]["full_score"] == pytest.approx(3 * rows[0]["full_score"], rel=1e-5)   # each its own column
