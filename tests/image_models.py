"""Hand-built stand-in image models and images whose right explanation is known: a model that sees only the top-left
quadrant, a textured image, a stick figure with a known head box."""
import torch


class QuadrantModel:
    """Sees only the top-left quadrant: score = its mean brightness."""
    num_targets = 1
    device = torch.device("cpu")
    chunk_size = 16

    def __call__(self, images):
        h, w = images.shape[-2:]
        return images[:, :, :h // 2, :w // 2].mean((1, 2, 3))[:, None]


def textured_image(h=32, w=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(3, h, w, generator=g) * 0.5 + 0.5


def stick_figure() -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """A dark stick figure on grey: head box (28, 8, 36, 16) of the 64 x 64 image."""
    img = torch.full((3, 64, 64), 0.5)
    img[:, 8:16, 28:36] = 1.0                      # head
    img[:, 16:40, 26:38] = 0.2                     # torso
    img[:, 40:60, 27:31] = 0.2                     # legs
    img[:, 40:60, 33:37] = 0.2
    return img, (28, 8, 36, 16)
