"""Compositing (explainers/perturb.py): image and baseline blended by the masks, chunk after chunk."""
import torch

from explainers.perturb import Compositor


def test_compositor_blends_image_and_baseline_chunk_after_chunk():
    g = torch.Generator().manual_seed(0)
    image, baseline = torch.rand(3, 12, 10, generator=g), torch.rand(3, 12, 10, generator=g)
    composite = Compositor(image, baseline)
    for n in (4, 4, 3, 6):                            # a smaller last chunk, then a larger one (the buffer grows)
        masks = torch.rand(n, 12, 10, generator=g)
        out = composite(masks)
        assert out.shape == (n, 3, 12, 10)
        expected = baseline[None] * (1 - masks[:, None]) + image[None] * masks[:, None]
        assert torch.allclose(out, expected, atol=1e-6)
