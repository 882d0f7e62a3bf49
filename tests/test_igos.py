"""iGOS++ (explainers/igos.py): the mask goes where the model looks, cost in forward-equivalents, budgets, the
bilateral TV, the detection / classification settings and the black-box error."""
from __future__ import annotations

import pytest
import torch

from explainers import energy_pointing_game
from explainers.base import BudgetError
from explainers.gradients import NeedsGradientsError
from explainers.igos import IGosPP, bilateral_tv, upscale
from tests.image_models import QuadrantModel, textured_image


def _quadrant_means(sal: torch.Tensor) -> list[float]:
    h, w = sal.shape[-2] // 2, sal.shape[-1] // 2
    return [float(sal[a:a + h, b:b + w].mean()) for a in (0, h) for b in (0, w)]


@pytest.mark.parametrize("setting", ["detection", "classification"])
def test_the_mask_of_a_model_that_sees_one_quadrant_is_there(setting):
    """A model that only sees the top-left quadrant: saliency there near 1, the far quadrant near 0, most of the
    energy inside the quadrant (chance 0.25); the cost is exactly iterations x 4 terms x K steps x 3."""
    image = textured_image(64, 64)
    kw = {"iterations": 5, "ig_steps": 4} if setting == "classification" else {}
    exp = IGosPP(QuadrantModel(), setting=setting, perturbation="constant", **kw).explain(image, seed=0)
    tl, tr, bl, br = _quadrant_means(exp.saliency[0])
    assert tl > 0.9 and br < 0.15 and max(tr, bl) < 0.5, (tl, tr, bl, br)
    quadrant = torch.zeros(1, 64, 64, dtype=torch.bool)
    quadrant[:, :32, :32] = True
    assert energy_pointing_game(exp.saliency, quadrant)[0] > 0.5
    iterations, K = (5, 5) if setting == "detection" else (5, 4)
    assert exp.n_forward == iterations * 4 * K * 3
    assert exp.saliency.min() >= 0 and exp.saliency.max() <= 1


def test_targets_are_explained_together_and_separately_alike():
    """Two targets (top-left, bottom-right quadrants) in one batched run: each target's map is its own quadrant."""
    class TwoQuadrants(QuadrantModel):
        num_targets = 2

        def __call__(self, images):
            return torch.stack([images[:, :, :32, :32].mean((1, 2, 3)), images[:, :, 32:, 32:].mean((1, 2, 3))], 1)

    exp = IGosPP(TwoQuadrants(), setting="detection", perturbation="constant").explain(textured_image(64, 64))
    first, second = _quadrant_means(exp.saliency[0]), _quadrant_means(exp.saliency[1])
    assert max(range(4), key=first.__getitem__) == 0 and max(range(4), key=second.__getitem__) == 3
    assert exp.n_forward == 5 * 4 * 5 * 3 * 2


def test_budget_sets_the_iterations_and_too_small_is_refused():
    image = textured_image(32, 32)
    exp = IGosPP(QuadrantModel(), setting="detection").explain(image, budget=130)
    assert exp.n_forward == 120                                   # two iterations of 60 (5 IG steps)
    exp = IGosPP(QuadrantModel(), setting="detection").explain(image, budget=59)
    assert exp.n_forward == 48                                    # one iteration of 4 IG steps
    with pytest.raises(BudgetError, match="igos_pp .* at least 12 forwards"):
        IGosPP(QuadrantModel(), setting="detection").explain(image, budget=11)
    assert IGosPP(QuadrantModel()).setting == "classification"   # auto: no target boxes
    with pytest.raises(ValueError, match="setting"):
        IGosPP(QuadrantModel(), setting="segmentation")


def test_bilateral_tv_is_smaller_across_image_edges():
    """The same mask step costs less where the image has an edge at the same place."""
    mask = torch.ones(1, 4, 4)
    mask[:, :, :2] = 0
    up = upscale(mask, (16, 16))
    flat = torch.full((3, 16, 16), 0.5)
    edged = flat.clone()
    edged[:, :, 8:] = 1.0
    assert bilateral_tv(edged, mask, up) < bilateral_tv(flat, mask, up)
    assert bilateral_tv(flat, torch.ones(1, 4, 4), upscale(torch.ones(1, 4, 4), (16, 16))) < 1e-12


def test_a_black_box_gets_the_needs_gradients_error():
    from detection.models.blackbox import CallableDetector
    from detection.scorers import DRiseScorer

    det = CallableDetector(lambda images: [{"boxes": [[2.0, 2.0, 10.0, 12.0]], "scores": [0.9], "labels": [0]}
                                           for _ in images], ["person"])
    scorer = DRiseScorer.for_detections(det, det.detect(torch.rand(1, 3, 16, 16))[0])
    assert IGosPP(scorer).setting == "detection"
    with pytest.raises(NeedsGradientsError, match="igos_pp needs gradients: CallableDetector is a black box"):
        IGosPP(scorer).explain(torch.rand(3, 16, 16))
