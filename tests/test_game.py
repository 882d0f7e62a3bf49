"""The region game (explainers/game.py): the masks it shows for soft, disjoint and overlapping regions."""
import torch

from explainers.game import RegionGame
from explainers.perturb import Constant


def test_region_game_masks_show_each_region_at_its_coalition_value():
    """Disjoint soft regions: a pixel is shown at outside + sum_r z_r f_r (no clamp needed); overlapping regions are
    clamped to [0, 1]; the mask buffer is reused chunk after chunk, growing when a chunk is larger."""
    g = torch.Generator().manual_seed(2)
    soft = torch.zeros(3, 6, 5)
    soft[0, :2], soft[1, 2:4], soft[2, 4:, :3] = 0.7, 1.0, 0.4                  # disjoint, partly soft
    overlapping = torch.cat([soft, torch.ones(1, 6, 5)])                          # a region covering everything
    image = torch.rand(3, 6, 5, generator=g)
    for regions in (soft, overlapping):
        game = RegionGame(lambda x: x[:, :1, 0, 0], image, regions, Constant(0.0), chunk_size=4)
        assert game.overlapping == (regions is overlapping)
        flat = regions.reshape(regions.shape[0], -1)
        for n in (2, 4, 3):
            z = torch.rand(n, regions.shape[0], generator=g)
            expected = ((1 - flat.sum(0)).clamp(0, 1) + z @ flat).clamp(0, 1).view(n, 6, 5)
            torch.testing.assert_close(game.masks(z), expected)
            scores = game(z)
            torch.testing.assert_close(scores[:, 0], image[0, 0, 0] * expected[:, 0, 0])
