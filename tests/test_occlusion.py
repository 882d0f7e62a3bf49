"""Occlusion (explainers/occlusion.py) on regions: label maps, painting, one region hidden per forward."""
import pytest
import torch

from explainers import Occlusion
from explainers.base import paint
from tests.image_models import QuadrantModel, textured_image


def test_occlusion_takes_a_label_map_as_regions_and_paints_their_relevance():
    labels = torch.arange(4).repeat_interleave(8).view(1, 32).expand(32, 32)
    exp = Occlusion(QuadrantModel(), perturbation="constant").explain(textured_image(), labels)
    assert exp.relevance.shape == (1, 4) and exp.n_forward == 5
    assert torch.equal(exp.saliency, paint(exp.relevance, (labels[None] == torch.arange(4).view(-1, 1, 1)).float()))


class SquareModel(QuadrantModel):
    """Not additive: the quadrant's mean brightness squared, and the whole image's mean."""
    num_targets = 2

    def __call__(self, images):
        return torch.stack([super().__call__(images)[:, 0] ** 2, images.mean((1, 2, 3))], 1)


@pytest.mark.parametrize("overlap", [False, True])
def test_region_occlusion_hides_exactly_one_region_per_forward(overlap):
    # soft regions (a partition, or one that overlaps and leaves pixels outside), five of them with chunks of 2: the
    # image and the hidden regions span several chunks
    g = torch.Generator().manual_seed(3)
    regions = torch.rand(5, 32, 32, generator=g)
    regions = regions * 1.3 if overlap else regions / regions.sum(0)
    image = textured_image()
    model = SquareModel()
    model.chunk_size = 2
    exp = Occlusion(model, perturbation="constant").explain(image, regions)
    masks = [torch.ones(32, 32)]
    for r in range(5):
        rest = regions.sum(0) - regions[r]
        masks.append((rest + (1 - regions.sum(0)).clamp(0, 1)).clamp(0, 1))
    scores = model(torch.stack(masks)[:, None] * image)           # constant(0) baseline: image * mask
    torch.testing.assert_close(exp.relevance, (scores[0] - scores[1:]).T)
    assert exp.n_forward == 6
