"""RISE and D-RISE (explainers/rise.py): the separable masks against the reference construction, the grid-resolution
weighted sum, centred RISE, D-RISE localising what a detector depends on."""
import math

import pytest
import torch

from detection.models.blackbox import CallableDetector
from detection.scorers import DRiseScorer
from explainers import DRise, Rise, box_masks, energy_pointing_game, pointing_game
from explainers.rise import RiseMasks, WeightedMaskSum, rise_masks
from tests.image_models import QuadrantModel, stick_figure, textured_image


@pytest.mark.parametrize("grid, height, width", [(8, 60, 80), (16, 48, 64), (7, 50, 45), (5, 32, 32)])
def test_rise_masks_equal_upsampling_the_whole_grid_and_cropping(grid, height, width):
    """The separable two-matmul masks are RISE's reference construction (upsample to (grid + 1) cells, crop)."""
    n = 6
    ch, cw = math.ceil(height / grid), math.ceil(width / grid)
    g = torch.Generator().manual_seed(5)
    cells = (torch.rand(n, 1, grid, grid, generator=g) < 0.5).float()
    big = torch.nn.functional.interpolate(cells, size=((grid + 1) * ch, (grid + 1) * cw), mode="bilinear",
                                          align_corners=False)[:, 0]
    dy, dx = torch.randint(0, ch, (n,), generator=g), torch.randint(0, cw, (n,), generator=g)
    reference = torch.stack([big[i, dy[i]:dy[i] + height, dx[i]:dx[i] + width] for i in range(n)])
    masks = rise_masks(n, grid, 0.5, height, width, torch.Generator().manual_seed(5), torch.device("cpu"))
    torch.testing.assert_close(masks, reference, rtol=0, atol=1e-5)


@pytest.mark.parametrize("grid, height, width", [(8, 32, 48), (5, 21, 17)])
def test_weighted_mask_sum_at_grid_resolution_equals_summing_the_full_size_masks(grid, height, width):
    """RISE keeps sum_i w_i M_i per row offset at grid resolution and expands it once: the same as summing the
    masks themselves (several chunks, so row offsets repeat within and across them)."""
    g = torch.Generator().manual_seed(1)
    sampler = RiseMasks(grid, 0.5, height, width, torch.device("cpu"))
    weighted = WeightedMaskSum(sampler, 3)
    expected = torch.zeros(3, height, width, dtype=torch.float64)
    for n in (16, 16, 7):
        masks, dy, right = sampler.draw(n, g)
        weights = torch.randn(n, 3, generator=g)
        weighted.add(weights, dy, right)
        expected += torch.einsum("nk,nhw->khw", weights.double(), masks.double())
    torch.testing.assert_close(weighted.total().double(), expected, rtol=0, atol=1e-4)


def test_centred_rise_is_plain_rise_minus_the_mean_score_times_coverage():
    image = textured_image()
    plain = Rise(QuadrantModel(), perturbation="constant").explain(image, budget=64, seed=3)
    centred = Rise(QuadrantModel(), perturbation="constant", center=True).explain(image, budget=64, seed=3)
    masks = torch.cat([rise_masks(16, 8, 0.5, 32, 32, g, torch.device("cpu"))
                       for g in [torch.Generator().manual_seed(3)] for _ in range(4)])
    model = QuadrantModel()
    scores = model(image * masks[:, None])[:, 0]
    expected = ((scores - scores.mean())[:, None, None] * masks).sum(0) / (64 * 0.5)
    torch.testing.assert_close(centred.saliency[0], expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(plain.saliency, centred.saliency)
    quadrant = torch.zeros(1, 32, 32, dtype=torch.bool)
    quadrant[:, :16, :16] = True
    assert energy_pointing_game(centred.saliency, quadrant)[0] > 0.6   # no mean offset to subtract first


def test_drise_localises_the_head_a_detector_depends_on():
    image, head = stick_figure()
    x1, y1, x2, y2 = head

    def detector(images):                          # one person box, scored only by how bright the head is
        s = images[:, :, y1:y2, x1:x2].mean((1, 2, 3)).clamp(0, 1).tolist()
        return [{"boxes": [[26, 8, 38, 60]], "scores": [v], "labels": [0]} for v in s]

    det = CallableDetector(detector, ["person"])
    scorer = DRiseScorer.for_detections(det, det.detect(image[None])[0])
    exp = DRise(scorer, grid=8).explain(image, budget=300, seed=0)
    head_mask = box_masks(torch.tensor([head], dtype=torch.float32), 64, 64)
    assert pointing_game(exp.saliency, head_mask, tolerance=4)[0] == 1.0
    body = box_masks(torch.tensor([[26, 8, 38, 60]], dtype=torch.float32), 64, 64)
    sal = exp.saliency - exp.saliency.min()
    assert (sal * head_mask).sum() / head_mask.sum() > 2 * (sal * (body & ~head_mask)).sum() / (body & ~head_mask).sum()
