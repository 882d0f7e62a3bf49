"""Explanation metrics (explainers/metrics.py) by hand, and on awkward inputs: constant / flat maps, ties, NaN, empty
regions, offset maps (issue 16)."""
import math

import pytest
import torch

from explainers.metrics import box_masks, deletion_insertion, energy_pointing_game, pointing_game, relative_error
from tests.image_models import QuadrantModel, textured_image

NAN = float("nan")


def _boxes(*boxes, h=64, w=64):
    return box_masks(torch.tensor(boxes, dtype=torch.float32), h, w)


def _reasons(saliency, masks, metric):
    from explainers.metrics import reason_names, undefined_reason
    return reason_names(undefined_reason(saliency, masks, metric))


def _isnan(x) -> list[bool]:
    return torch.isnan(torch.as_tensor(x, dtype=torch.float32)).tolist()


# ---------------------------------------------------------------------------------------------- pointing game
@pytest.mark.parametrize("value", [0.0, 0.7, -2.0])
def test_a_constant_map_is_undefined_for_every_target_not_a_hit_near_the_top_left(value):
    masks = _boxes([0, 0, 10, 10], [50, 50, 60, 60])         # before: hit (argmax = pixel 0) and miss
    sal = torch.full((2, 64, 64), value)
    assert _isnan(pointing_game(sal, masks)) == [True, True]
    assert _reasons(sal, masks, "pointing") == ["constant_saliency", "constant_saliency"]


def test_two_equal_peaks_count_the_same_for_both_targets():
    sal = torch.zeros(2, 64, 64)
    sal[:, 5, 5] = 1.0                                        # one peak in each box, exactly tied
    sal[:, 55, 55] = 1.0
    masks = _boxes([0, 0, 10, 10], [50, 50, 60, 60])
    assert pointing_game(sal, masks).tolist() == [1.0, 1.0]   # before: [True, False] (the first maximal pixel)
    far = _boxes([30, 0, 40, 10], [30, 0, 40, 10])             # 20 px from either peak: a miss for both
    assert pointing_game(sal, far).tolist() == [0.0, 0.0]


def test_tolerance_is_euclidean_and_exact_on_a_plateau():
    sal = torch.zeros(3, 40, 40)
    sal[0, 18, 12] = 1.0                    # 9 px below, 12 px left of the box's pixel (x 24, y 9): 15.0 px: hit
    sal[1, 19, 12] = 1.0                    # 10 / 12 px: 15.6 px: miss
    sal[2, 14:, :5] = 1.0                   # a plateau of maxima; its pixel nearest the box (x 4, y 14): 20.6 px
    masks = _boxes([24, 0, 34, 10], [24, 0, 34, 10], [24, 0, 34, 10], h=40, w=40)
    assert pointing_game(sal, masks).tolist() == [1.0, 0.0, 0.0]
    assert pointing_game(sal, masks, tolerance=21).tolist() == [1.0, 1.0, 1.0]
    assert pointing_game(sal, masks, tolerance=0).tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("tolerance", [0, 1, 1.5, 2.9, 7, 15, 15.5, 70])
def test_near_region_is_the_exact_euclidean_dilation(tolerance):
    from explainers.metrics import near_region

    g = torch.Generator().manual_seed(1)
    for h, w in ((40, 50), (7, 60), (60, 5)):
        masks = torch.rand(3, h, w, generator=g) > 0.99
        masks[2] = False                                         # an empty region is near nothing
        ys, xs = torch.meshgrid(torch.arange(float(h)), torch.arange(float(w)), indexing="ij")
        pixels = torch.stack([ys.ravel(), xs.ravel()], 1)
        expected = torch.stack([
            (((pixels[:, None] - pixels[m.ravel()][None]) ** 2).sum(-1) <= tolerance ** 2).any(1).view(h, w)
            for m in masks])
        assert torch.equal(near_region(masks, tolerance), expected)


def test_nan_saliency_gives_nan_not_a_hit():
    sal = torch.zeros(1, 20, 20)
    sal[0, 2:5, 2:5] = 1.0
    sal[0, 15, 15] = NAN                                      # before: argmax picks the NaN pixel: a hit
    box = _boxes([12, 12, 18, 18], h=20, w=20)
    assert _isnan(pointing_game(sal, box)) == [True]
    assert _isnan(energy_pointing_game(sal, box)) == [True]   # before: 0.0
    assert _isnan(energy_pointing_game(torch.full((1, 20, 20), NAN), box)) == [True]    # before: 0.0
    inf = torch.zeros(1, 20, 20)
    inf[0, 0, 0] = float("inf")
    assert _isnan(pointing_game(inf, box)) == [True] and _isnan(energy_pointing_game(inf, box)) == [True]
    assert _reasons(sal, box, "epg") == ["nonfinite_saliency"]


def test_an_empty_region_is_undefined_for_pointing_and_energy():
    sal = torch.zeros(3, 20, 20)
    sal[:, 5, 5] = 1.0
    sal[:, 0, 0] = -1.0
    masks = _boxes([5, 5, 5, 5],            # zero area, on the peak: before a miss and EPG 0.0
                   [30, 30, 40, 40],        # wholly outside the image
                   [5.2, 5.2, 5.4, 9.0],    # positive area but no pixel centre inside
                   h=20, w=20)
    assert not masks.any()
    assert _isnan(pointing_game(sal, masks)) == [True] * 3
    assert _isnan(energy_pointing_game(sal, masks)) == [True] * 3
    assert _reasons(sal, masks, "pointing") == ["empty_region"] * 3


def test_shapes_must_agree():
    with pytest.raises(ValueError, match=r"masks.*\(1, 8, 8\).*\(1, 8, 9\)"):
        pointing_game(torch.rand(1, 8, 9), torch.ones(1, 8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="tolerance"):
        pointing_game(torch.rand(1, 8, 8), torch.ones(1, 8, 8, dtype=torch.bool), tolerance=-1)


# ---------------------------------------------------------------------------------------------- energy
def test_energy_pointing_game_of_a_signed_map_is_unchanged():
    sal = torch.zeros(1, 10, 10)
    sal[0, :5] = 1.0                        # 50 positive pixels, 20 of them in the box
    sal[0, 5:] = -3.0
    box = _boxes([0, 3, 10, 7], h=10, w=10)
    assert math.isclose(energy_pointing_game(sal, box)[0].item(), 20 / 50, abs_tol=1e-6)


def test_energy_pointing_game_is_undefined_where_it_cannot_mean_anything():
    from explainers.metrics import region_share

    box = _boxes([2, 2, 8, 8], h=20, w=20)                  # 36 of 400 pixels
    offset = torch.ones(1, 20, 20)
    offset[0, 15, 15] = 1.5                 # positive everywhere: EPG ~ the box's area share (before: 36/400.5)
    negative = -torch.rand(1, 20, 20, generator=torch.Generator().manual_seed(0)) - 0.1
    zeros = torch.zeros(1, 20, 20)          # what D-RISE gives a pedestrian the detector never finds: before 0.0
    for sal, reason in ((offset, "positive_everywhere"), (negative, "no_positive_saliency"),
                        (zeros, "constant_saliency")):
        assert _isnan(energy_pointing_game(sal, box)) == [True]
        assert _reasons(sal, box, "epg") == [reason]
    assert region_share(box).tolist() == [36 / 400]          # the chance level reported beside EPG
    with_zero = offset.clone()
    with_zero[0, 0, 0] = 0.0                # one pixel without saliency: defined (region maps are 0 outside)
    assert math.isclose(energy_pointing_game(with_zero, box)[0].item(), 36 / 399.5, rel_tol=1e-6)


# ---------------------------------------------------------------------------------------------- deletion / insertion
class MeanScorer:
    """Column t: the image's mean (the same for every target): on an all-ones image with a zero substrate the
    deletion curve is 1 - (share deleted) whatever the ranking, so the AUC is 0.5 exactly."""
    device = "cpu"
    chunk_size = 4

    def __init__(self, targets: int):
        self.targets = targets
        self.calls = 0

    def __call__(self, images):
        self.calls += images.shape[0]
        return images.mean((1, 2, 3))[:, None].expand(-1, self.targets)


@pytest.mark.parametrize("mode, auc", [("deletion", 0.5), ("insertion", 0.5)])
def test_deletion_insertion_of_a_constant_or_nan_map_is_undefined(mode, auc):
    image = torch.ones(3, 8, 8)
    sal = torch.stack([torch.arange(64.0).view(8, 8), torch.full((8, 8), 0.3), torch.arange(64.0).view(8, 8)])
    sal[2, 3, 3] = NAN
    scorer = MeanScorer(3)
    out = deletion_insertion(scorer, image, sal, mode=mode, substrate="constant", steps=4)
    assert out.auc[0].item() == pytest.approx(auc, abs=1e-6)
    assert _isnan(out.auc) == [False, True, True]              # before: 0.5, 0.5, 0.5
    assert torch.isnan(out.curves[1:]).all() and not torch.isnan(out.curves[0]).any()
    assert out.n_forward == scorer.calls == 5                  # no forwards spent on undefined targets
    from explainers.metrics import reason_names
    assert reason_names(out.reason) == [None, "constant_saliency", "nonfinite_saliency"]
    none = deletion_insertion(MeanScorer(1), image, torch.zeros(1, 8, 8), mode=mode, substrate="constant", steps=4)
    assert none.n_forward == 0 and _isnan(none.auc) == [True] and none.curves.shape == (1, 5)


# ---------------------------------------------------------------------------------------------- agreement, error
def test_spearman_of_nan_or_constant_relevance_is_nan():
    from tasks.evaluate import spearman

    assert math.isnan(spearman([1.0, NAN, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]))      # before: 0.4
    assert math.isnan(spearman([2.0, 2.0, 2.0], [1.0, 2.0, 3.0]))
    assert spearman([1.0, 2.0, 2.0, 4.0], [1.0, 3.0, 2.0, 4.0]) == pytest.approx(0.9486832980505138)


def test_relative_error_against_all_zero_exact_values_is_nan():
    assert _isnan(relative_error(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 0.0]]))) == [True]   # before 1e12
    assert _isnan(relative_error(torch.tensor([[NAN, 0.0]]), torch.tensor([[1.0, 0.0]]))) == [True]
    assert relative_error(torch.tensor([[0.0, 0.0]]), torch.tensor([[3.0, 4.0]]))[0].item() == 1.0


def test_top_part_match_and_agreement_rows_on_ties_constant_and_nan():
    import pyarrow as pa

    from tasks.evaluate import agreement_rows

    def exp(job, target, relevance):
        return {"image_id": "i", "target_id": target, "kind": "persons", "job": job,
                "region_names": ["a", "b", "c", "d"], "relevance": relevance}

    table = pa.Table.from_pylist([
        exp("j1", "tie", [2.0, 2.0, 0.0, 1.0]), exp("j2", "tie", [0.0, 2.0, 1.0, 2.0]),   # top sets {a,b}, {b,d}
        exp("j1", "flat", [1.0, 1.0, 1.0, 1.0]), exp("j2", "flat", [0.0, 2.0, 1.0, 3.0]),
        exp("j1", "nan", [1.0, NAN, 0.0, 0.5]), exp("j2", "nan", [0.0, 2.0, 1.0, 3.0])])
    rows = {(r["target_id"], r["metric"]): r["value"] for r in agreement_rows(table)}
    assert rows[("tie", "top_part_match:j2")] == 1.0               # before: argmax 0 vs 1 -> 0.0
    assert rows[("tie", "agree:j2")] == pytest.approx(-1 / 18)
    assert ("flat", "top_part_match:j2") not in rows                # before: 1.0 (argmax 0 == argmax 0)
    assert rows[("flat", "undefined:top_part_match:j2:constant_relevance")] == 1.0
    assert rows[("flat", "undefined:agree:j2:constant_relevance")] == 1.0
    assert ("nan", "agree:j2") not in rows and ("nan", "top_part_match:j2") not in rows
    assert rows[("nan", "undefined:agree:j2:nonfinite_relevance")] == 1.0
    assert rows[("nan", "undefined:top_part_match:j2:nonfinite_relevance")] == 1.0
    assert len(rows) == 6


# ----------------------------------------------------------------------------------------------- by hand
def test_deletion_and_insertion_prefer_the_true_saliency():
    model, image = QuadrantModel(), textured_image()
    good = torch.zeros(1, 32, 32)
    good[:, :16, :16] = 1 + torch.rand(16, 16)
    bad = torch.zeros(1, 32, 32)
    bad[:, 16:, 16:] = 1
    d_good = deletion_insertion(model, image, good, mode="deletion", substrate="constant", steps=16)
    d_bad = deletion_insertion(model, image, bad, mode="deletion", substrate="constant", steps=16)
    assert d_good.auc[0] < d_bad.auc[0] and d_good.n_forward == 17 and d_good.substrate == "constant(0.0)"
    i_good = deletion_insertion(model, image, good, mode="insertion", substrate="constant", steps=16)
    i_bad = deletion_insertion(model, image, bad, mode="insertion", substrate="constant", steps=16)
    assert i_good.auc[0] > i_bad.auc[0]
    assert torch.isclose(d_good.curves[0, 0], model(image[None])[0, 0])          # starts from the full image
    assert d_good.curves[0, -1] == 0                                                # ends on the substrate


def test_pointing_game_and_energy_pointing_game_by_hand():
    sal = torch.zeros(2, 40, 40)
    sal[0, 5, 5] = 1.0                 # peak 15 px left of the box's edge (x=20): a hit at 15 px tolerance
    sal[1, 5, 4] = 1.0                 # 16 px away: a miss
    masks = box_masks(torch.tensor([[20, 0, 30, 10], [20, 0, 30, 10]], dtype=torch.float32), 40, 40)
    assert pointing_game(sal, masks).tolist() == [True, False]
    sal = torch.zeros(1, 10, 10)
    sal[0, :5] = 1.0                   # 50 positive pixels, 20 of them in the box
    sal[0, 5:] = -3.0                  # negative saliency does not count
    box = box_masks(torch.tensor([[0, 3, 10, 7]], dtype=torch.float32), 10, 10)
    assert math.isclose(energy_pointing_game(sal, box)[0].item(), 20 / 50, abs_tol=1e-6)
    assert torch.isnan(energy_pointing_game(torch.zeros(1, 10, 10), box)[0])     # uninformative: undefined


def test_relative_error_is_zero_on_a_match_and_one_for_an_all_zero_estimate():
    assert relative_error(torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0, 2.0]]))[0] == 0
    assert math.isclose(relative_error(torch.tensor([[0.0, 0.0]]), torch.tensor([[3.0, 4.0]]))[0].item(), 1.0)


def test_the_stored_metric_columns_name_the_metrics_default_substrates():
    """tasks.metric_names.SUBSTRATES (torch-free, for column names) states the same rule as default_substrate."""
    from explainers.metrics import default_substrate
    from tasks.metric_names import SUBSTRATES

    assert SUBSTRATES == {mode: default_substrate(mode) for mode in ("deletion", "insertion")}
