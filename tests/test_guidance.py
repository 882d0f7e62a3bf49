"""Model guidance (explainers.guidance, detection.models.guided_training): the energy loss is 1 − EPG, its gradient
moves attribution into the box, and guidance lowers a toy model's reliance on a planted cue."""
import numpy as np
import pytest
import torch
from torch import nn

from explainers.guidance import (
    attribution,
    class_box_masks,
    energy_loss,
    energy_pointing,
    l1_loss,
    localisation_loss,
    ppce_loss,
    rrr_loss,
    sample_classes,
)
from explainers.metrics import energy_pointing_game


def test_energy_loss_is_one_minus_epg_on_a_hand_built_map():
    attr = torch.zeros(1, 4, 6)
    attr[0, 1, 1], attr[0, 1, 2], attr[0, 3, 5], attr[0, 0, 0] = 3.0, 1.0, 4.0, -7.0    # 8 positive, 4 inside
    mask = class_box_masks(torch.tensor([[1.0, 1.0, 3.0, 3.0]]), torch.tensor([0]), 1, 4, 6)
    assert mask.sum() == 4 and mask[0, 1, 1] and mask[0, 2, 2] and not mask[0, 3, 5]
    assert energy_loss(attr, mask).item() == pytest.approx(1 - 4 / 8)
    assert energy_loss(attr, mask).item() == pytest.approx(1 - energy_pointing_game(attr, mask).item())
    assert energy_pointing(attr, mask).item() == pytest.approx(0.5)
    # no positive attribution: the reference's 1 − (inside) rule, not a division by zero
    assert energy_loss(-attr.abs(), mask).item() == pytest.approx(1.0)


def test_box_masks_union_per_image_and_bad_input():
    masks = class_box_masks(torch.tensor([[0.0, 0, 2, 2], [2.0, 2, 4, 4], [0.0, 0, 1, 1]]), torch.tensor([0, 0, 2]),
                            3, 4, 4)
    assert masks.shape == (3, 4, 4) and masks[0].sum() == 8 and masks[1].sum() == 0 and masks[2].sum() == 1
    with pytest.raises(ValueError, match="image index"):
        class_box_masks(torch.tensor([[0.0, 0, 1, 1]]), torch.tensor([3]), 3, 4, 4)
    with pytest.raises(ValueError, match="localisation loss"):
        localisation_loss("dice", torch.zeros(1, 2, 2), torch.zeros(1, 2, 2, dtype=torch.bool))


def test_every_loss_is_zero_when_attribution_is_the_box_and_positive_when_it_peaks_outside():
    mask = torch.zeros(1, 5, 5, dtype=torch.bool)
    mask[0, 1:3, 1:3] = True
    inside = mask.float() * 2.0
    for fn in (l1_loss, rrr_loss, ppce_loss, energy_loss):
        assert fn(inside, mask).item() == pytest.approx(0.0, abs=1e-6), fn.__name__
        assert fn(inside + 4 * (~mask).float(), mask).item() > 0.05, fn.__name__      # PPCE: via the max


def test_sample_classes_picks_a_positive_label_or_minus_one():
    labels = torch.tensor([[0, 1, 1, 0], [0, 0, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    picks = torch.stack([sample_classes(labels, torch.Generator().manual_seed(s)) for s in range(30)])
    assert set(picks[:, 0].tolist()) == {1, 2} and (picks[:, 1] == -1).all() and (picks[:, 2] == 0).all()


class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                                      nn.ReLU())
        self.head = nn.Linear(8, 1)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


def test_energy_gradient_moves_attribution_into_the_box_within_a_few_steps():
    """A red square marks the box; BCE alone would not care where the evidence is, the energy term moves it there."""
    mask = class_box_masks(torch.tensor([[4.0, 4, 10, 10]] * 4), torch.arange(4), 4, 16, 16)
    cls = torch.zeros(4, dtype=torch.long)
    for method, layer in (("ixg", None), ("grad_cam", "features.2")):
        torch.manual_seed(0)
        model = _Toy()
        x = torch.rand(4, 3, 16, 16) * 0.5
        x[:, 0] += 0.5 * mask
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        before = energy_pointing(attribution(model, x, cls, method=method, layer=layer), mask).mean().item()
        for _ in range(10):
            attr = attribution(model, x, cls, method=method, layer=layer)
            loss = energy_loss(attr, mask).sum() + nn.functional.softplus(-model(x)).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        after = energy_pointing(attribution(model, x, cls, method=method, layer=layer), mask).mean().item()
        assert before < 0.3 and after > 0.6, (method, before, after)


def _planted(n: int, gen: torch.Generator, cue_rate: tuple[float, float] = (0.95, 0.05), objects: bool | None = None):
    """24x24 images: label 1 = a faint square (its box returned) somewhere; the cue (a background tint in channel 2)
    is present with P = cue_rate[0] when the label is, cue_rate[1] when it is not."""
    y = torch.rand(n, generator=gen) < 0.5 if objects is None else torch.full((n,), objects)
    p_cue = torch.where(y, cue_rate[0], cue_rate[1])
    cue = torch.rand(n, generator=gen) < p_cue
    x = torch.rand(n, 3, 24, 24, generator=gen) * 0.3
    x[:, 2] += 0.4 * cue.view(-1, 1, 1)
    xy = torch.randint(0, 18, (n, 2), generator=gen)
    boxes = torch.cat([xy, xy + 6], 1).float()
    inside = class_box_masks(boxes, torch.arange(n), n, 24, 24)
    x[:, 0] += 0.25 * (inside & y.view(-1, 1, 1))
    return x, y, cue, boxes


def _train_toy(lam: float, steps: int = 150) -> nn.Module:
    gen = torch.Generator().manual_seed(1)
    torch.manual_seed(0)
    model = _Toy()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(steps):
        x, y, _, boxes = _planted(32, gen)
        loss = nn.functional.binary_cross_entropy_with_logits(model(x)[:, 0], y.float())
        if lam > 0 and y.any():
            pos = torch.nonzero(y).flatten()
            masks = class_box_masks(boxes[pos], torch.arange(len(pos)), len(pos), 24, 24)
            attr = attribution(model, x[pos], torch.zeros(len(pos), dtype=torch.long), method="ixg")
            loss = loss + lam * energy_loss(attr, masks).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def _probe(model: nn.Module) -> tuple[float, float]:
    """P(label | no object, cue), P(label | no object, no cue) on fresh scenes."""
    gen = torch.Generator().manual_seed(99)
    x, _, _, _ = _planted(200, gen, (1.0, 1.0), objects=False)
    x0, _, _, _ = _planted(200, gen, (0.0, 0.0), objects=False)
    with torch.no_grad():
        return torch.sigmoid(model(x)).mean().item(), torch.sigmoid(model(x0)).mean().item()


def test_a_guided_toy_model_relies_less_on_a_planted_cue():
    plain, guided = _probe(_train_toy(0.0)), _probe(_train_toy(1.0))
    assert plain[0] > 0.5 and plain[0] - plain[1] > 0.3            # the unguided model reads the cue
    assert guided[0] < plain[0] - 0.2, (plain, guided)              # the guided one much less
    assert guided[0] - guided[1] < plain[0] - plain[1]


def test_guided_finetune_runs_on_a_tiny_scene_net_and_keeps_its_input():
    from detection.models.classifier import ImageClassifier
    from detection.models.guided_training import GuidanceTraining, annotated_subset, guided_finetune
    from detection.models.scene_classifier import SceneNet

    torch.manual_seed(0)
    clf = ImageClassifier(SceneNet(2, width=4), ["a", "b"], multi_label=True, mean=(0, 0, 0), std=(1, 1, 1),
                          input_size=(32, 48), device="cpu")
    before = {k: v.clone() for k, v in clf.model.state_dict().items()}
    images = torch.randint(0, 256, (6, 3, 32, 48), dtype=torch.uint8)
    labels = torch.tensor([[1, 0], [0, 1], [1, 1], [0, 0], [1, 0], [0, 1]], dtype=torch.bool)
    boxes = [(np.array([c for c in range(2) if labels[n, c]]), np.tile([[4.0, 4, 20, 20]], (int(labels[n].sum()), 1)))
             for n in range(6)]
    cfg = GuidanceTraining(fraction=0.5, epochs=2, batch_size=4, layer="features.1", progress=False)
    new, hist = guided_finetune(clf, images, labels, boxes, cfg, seed=3)
    assert hist.annotated_images == 3 and len(hist.bce) == 2 and sum(hist.annotated) > 0
    assert all(torch.equal(before[k], v) for k, v in clf.model.state_dict().items())        # input untouched
    assert any(not torch.equal(before[k], v) for k, v in new.model.state_dict().items())
    assert new.classify(images.float() / 255).shape == (6, 2)
    assert annotated_subset(100, 0.1, 0).sum() == 10 and annotated_subset(5, 0.01, 0).sum() == 1
    assert (annotated_subset(100, 0.1, 0) == annotated_subset(100, 0.1, 0)).all()
    with pytest.raises(ValueError, match="fraction"):
        GuidanceTraining(fraction=0.0)
    with pytest.raises(ValueError, match="uint8"):
        guided_finetune(clf, images.float(), labels, boxes, cfg)
    only_b = GuidanceTraining(fraction=1.0, epochs=1, batch_size=6, layer="features.1", progress=False, classes=(1,))
    assert guided_finetune(clf, images, labels, boxes, only_b)[1].annotated == [3]      # images with class b only
    with pytest.raises(ValueError, match="out of range"):
        guided_finetune(clf, images, labels, boxes, GuidanceTraining(classes=(2,), progress=False))
