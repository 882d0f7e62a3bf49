"""Factories a ``kind: callable`` spec names in tests (tests/test_callable_spec.py): a detector that finds bright
squares, a classifier of mean brightness, and factories that fail in each way the builder reports."""
import torch

from detection.models.blackbox import CallableDetector
from detection.models.classifier import ImageClassifier

CALLS: list[dict] = []          # the arguments of every factory call, for the once-per-process test


def bright_square_detector(threshold: float = 0.5, label: int = 0, *, device: str = "cpu",
                           weights: str | None = None) -> CallableDetector:
    """A detector of the bright pixels' bounding box: one detection per image (score = their mean brightness),
    none when no pixel of channel 0 exceeds ``threshold``."""
    CALLS.append({"threshold": threshold, "label": label, "device": device, "weights": weights})

    def fn(images: torch.Tensor) -> list[dict]:
        out = []
        for img in images:
            ys, xs = torch.nonzero(img[0] > threshold, as_tuple=True)
            if len(xs) == 0:
                out.append({"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0)})
                continue
            box = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()[None]
            out.append({"boxes": box, "scores": img[0][ys, xs].mean()[None], "labels": torch.tensor([label])})
        return out

    return CallableDetector(fn, ["person", "car"])


class _Brightness(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean((1, 2, 3))
        return torch.stack([m * 4 - 2, 2 - m * 4], -1)        # logits of [bright, dark]


def brightness_classifier(device: str = "cpu") -> ImageClassifier:
    return ImageClassifier(_Brightness(), ["bright", "dark"], multi_label=False, mean=(0, 0, 0), std=(1, 1, 1),
                           device=device)


def raises(**kwargs):
    raise RuntimeError("the weights server is down")


def not_a_detector():
    return {"boxes": []}


def no_arguments():
    return brightness_classifier()


NOT_CALLABLE = 42
