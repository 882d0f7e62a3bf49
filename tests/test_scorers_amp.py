"""The scorers' float16 check (detection.scorers): on its first call a scorer of a model in autocast compares the
first chunk's scores with float32 and keeps float16 only when no score moved by more than ``amp_tolerance``; else
it warns and scores in float32. Tested on the CPU with stand-in models whose 'float16' scores drift by a set amount
(the adapters turn ``amp`` on only on CUDA)."""
import warnings

import pytest
import torch

from detection.models.base import Candidates
from detection.scorers import DEFAULT_AMP_TOLERANCE, ClassifierScorer, DRiseScorer


class DriftingClassifier:
    """Multi-label 'classifier' whose probabilities are exactly ``(mean brightness, 1 - it)`` in float32 and move
    by ``drift`` (on the first image, or ``nan``) while ``amp`` is on; it records the ``amp`` of every call."""

    device = torch.device("cpu")
    multi_label = True
    num_classes = 2

    def __init__(self, drift: float, batch_size: int = 4):
        self.amp, self.drift, self.batch_size, self.calls = True, drift, batch_size, []

    def exact(self, images: torch.Tensor) -> torch.Tensor:
        m = images.mean((1, 2, 3))
        return torch.stack([m, 1 - m], 1)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        self.calls.append((self.amp, len(images)))
        p = self.exact(images)
        if self.amp:
            p = p.clone()
            p[0, 0] += self.drift
        return torch.logit(p.double()).float()


class DriftingDetector:
    """One candidate box per image, scored by the image's mean brightness (the first image's + ``drift`` while
    ``amp`` is on)."""

    device = torch.device("cpu")
    num_classes = 1

    def __init__(self, drift: float):
        self.amp, self.drift, self.batch_size, self.calls = True, drift, 4, []

    def exact(self, images: torch.Tensor) -> torch.Tensor:
        return images.mean((1, 2, 3))[:, None]

    def candidates(self, images: torch.Tensor) -> Candidates:
        self.calls.append((self.amp, len(images)))
        s = self.exact(images)[:, 0].clone()
        if self.amp:
            s[0] += self.drift
        B = len(images)
        return Candidates(boxes=torch.tensor([[[0.0, 0.0, 8.0, 8.0]]]).expand(B, 1, 4), objectness=s[:, None],
                          class_probs=torch.ones(B, 1, 1), valid=torch.ones(B, 1, dtype=torch.bool))


def _scorer(kind: str, drift: float, **kw):
    if kind == "classifier":
        model = DriftingClassifier(drift)
        return model, ClassifierScorer(model, targets=[0], chunk_size=4, **kw)
    model = DriftingDetector(drift)
    return model, DRiseScorer(model, torch.tensor([[0.0, 0.0, 8.0, 8.0]]), torch.ones(1, 1), chunk_size=4, **kw)


IMAGES = torch.linspace(0.2, 0.8, 10).view(10, 1, 1, 1).expand(10, 3, 8, 8).contiguous()


@pytest.mark.parametrize("kind", ["classifier", "detector"])
@pytest.mark.parametrize("drift", [0.05, 2 * DEFAULT_AMP_TOLERANCE, float("nan")])
def test_float16_drifting_beyond_the_tolerance_falls_back_to_float32(kind, drift):
    model, scorer = _scorer(kind, drift)
    with pytest.warns(UserWarning, match="mixed precision changes scores by .* scoring in float32"):
        scores = scorer(IMAGES)
    assert model.amp is False
    torch.testing.assert_close(scores, model.exact(IMAGES)[:, :1], rtol=0, atol=1e-6)   # float32 scores, all chunks
    # Checked once, on the first chunk (float16, then float32); every chunk then in float32, and nothing re-checks.
    assert model.calls == [(True, 4), (False, 4), (False, 4), (False, 4), (False, 2)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(scorer(IMAGES[:3]), model.exact(IMAGES[:3])[:, :1], rtol=0, atol=1e-6)
    assert model.calls[5:] == [(False, 3)]


@pytest.mark.parametrize("kind", ["classifier", "detector"])
def test_float16_within_the_tolerance_is_kept(kind):
    drift = DEFAULT_AMP_TOLERANCE / 2
    model, scorer = _scorer(kind, drift)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scores = scorer(IMAGES)
    assert model.amp is True
    assert model.calls == [(True, 4), (False, 4), (True, 4), (True, 4), (True, 2)]
    expected = model.exact(IMAGES)[:, :1].clone()
    expected[[0, 4, 8]] += drift                              # the float16 scores of each chunk
    torch.testing.assert_close(scores, expected, rtol=0, atol=1e-6)


def test_the_tolerance_is_the_scorers_setting_and_models_without_amp_are_never_checked():
    model, scorer = _scorer("classifier", 0.05, amp_tolerance=0.1)
    scorer(IMAGES)
    assert model.amp is True                                  # 0.05 <= 0.1
    model, scorer = _scorer("classifier", 0.05, amp_tolerance=0.04)
    with pytest.warns(UserWarning, match="0.05 > 0.04"):
        scorer(IMAGES)
    assert model.amp is False
    model = DriftingClassifier(0.05)
    model.amp = False                                         # e.g. on the CPU: nothing to check
    scorer = ClassifierScorer(model, targets=[0], chunk_size=4)
    torch.testing.assert_close(scorer(IMAGES), model.exact(IMAGES)[:, :1], rtol=0, atol=1e-6)
    assert model.calls == [(False, 4), (False, 4), (False, 2)]
