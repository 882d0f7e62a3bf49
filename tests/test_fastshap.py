"""FastShapParts (explainers.fastshap) and its training (tasks.fastshap_train, tasks.fastshap_data) on tiny synthetic
persons scored by an additive black box: learning, efficiency, the guard, the coalition cache's resume."""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from explainers import bayes_shapley
from explainers.base import BudgetError
from explainers.fastshap import (
    IMAGE_MEAN,
    IMAGE_STD,
    Crop,
    FastShapBayesShapley,
    FastShapCheckpoint,
    FastShapParts,
    persons_inputs,
    player_names,
)
from explainers.game import RegionGame
from explainers.metrics import relative_error
from explainers.perturb import make_perturbation
from explainers.trained import weights_fingerprint
from tasks.fastshap_data import CoalitionCache, Person, kernel_pairs, person_coalitions, targets_by_person
from tasks.fastshap_train import build_checkpoint, exact_check, mirror_permutation, person_sample, train_network

GROUPING = "parts4"                      # head, torso, arms, legs + context: 5 players
P = len(player_names(GROUPING))
SIZE = 48
PERTURBATION = make_perturbation("mean")
CROP = Crop((32, 16))                    # the 24 x 12 px persons at about their own scale


class LinearScorer:
    """An additive black box: score = channel weights . the image's mean colour (one target). Hiding a region with
    the mean colour changes the score by its area x (its colour - mean) . weights / pixels, whatever else is hidden."""

    def __init__(self, weights=(1.0, -0.6, 0.3)):
        self.model = nn.Linear(3, 1, bias=False)
        with torch.no_grad():
            self.model.weight.copy_(torch.tensor([weights]))
        self.device, self.num_targets, self.chunk_size = torch.device("cpu"), 1, 64

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model(images.mean((2, 3)))


def make_person(k: int, scorer: LinearScorer, drop: bool = True) -> Person:
    """A 24 x 12 'person' at a random place of a 48 x 48 image: four bands of random colours (one band sometimes
    without a pixel) and the context (the box's side columns)."""
    rng = np.random.default_rng(k)
    image = torch.from_numpy(rng.uniform(0.3, 0.7, (3, 1, 1))).float().expand(3, SIZE, SIZE).clone()
    top, left = int(rng.integers(0, SIZE - 24)), int(rng.integers(0, SIZE - 12))
    cuts = np.sort(rng.choice(np.arange(3, 22), 3, replace=False))
    bands = np.split(np.arange(24), cuts)
    masks = torch.zeros(P, SIZE, SIZE, dtype=torch.bool)
    missing = int(rng.integers(0, 4)) if drop and rng.random() < 0.3 else -1
    for i, rows in enumerate(bands):
        if i == missing:
            continue
        masks[i, top + rows[0]:top + rows[-1] + 1, left + 2:left + 10] = True
        image[:, top + rows[0]:top + rows[-1] + 1, left + 2:left + 10] = torch.from_numpy(
            rng.uniform(0, 1, (3, 1, 1))).float()
    box = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    box[top:top + 24, left:left + 12] = True
    masks[P - 1] = box & ~masks[:P - 1].any(0)
    image[:, masks[P - 1]] = torch.from_numpy(rng.uniform(0, 1, (3, 1))).float()
    return Person(f"p{k:03d}", k, 0, image, masks, scorer)


def additive_shapley(person: Person, scorer: LinearScorer) -> torch.Tensor:
    """The exact Shapley values [P] of the additive game: each player's own effect."""
    diff = person.image - PERTURBATION.baseline(person.image)
    w = scorer.model.weight[0].detach()
    return torch.stack([(w @ (diff * m).reshape(3, -1)).sum() / (SIZE * SIZE) for m in person.masks.float()])


def samples_for(persons, scorer, pairs=6, seed=0, tmp_path=None):
    cache = CoalitionCache(tmp_path, {"pairs": pairs, "seed": seed}, block=8)
    cache.build(persons, PERTURBATION, chunk_size=64)
    records = targets_by_person(cache.read(), P)
    return [person_sample(p, records[p.person_id], CROP, PERTURBATION) for p in persons]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A network trained a few seconds on 48 persons of the additive game."""
    torch.set_num_threads(1)
    scorer = LinearScorer()
    persons = [make_person(k, scorer) for k in range(56)]
    samples = samples_for(persons, scorer, tmp_path=tmp_path_factory.mktemp("cache"))
    state, summary = train_network(samples[:48], P, val=samples[48:], epochs=20, batch_size=4, lr=3e-3, width=16,
                                   hidden=64, seed=0)
    ckpt = build_checkpoint(weights_fingerprint(SimpleNamespace(model=scorer.model)), GROUPING, PERTURBATION, state,
                            CROP, 16, 64, summary)
    return scorer, ckpt, summary


def test_kernel_pairs_are_complementary_and_proper():
    Z = kernel_pairs(7, 50, np.random.default_rng(0))
    assert Z.shape == (100, 7)
    assert np.array_equal(Z[0::2] + Z[1::2], np.ones((50, 7)))
    sizes = Z.sum(1)
    assert sizes.min() >= 1 and sizes.max() <= 6
    with pytest.raises(ValueError, match=">= 2 players"):
        kernel_pairs(1, 3, np.random.default_rng(0))


def test_mirror_permutation_swaps_sides():
    names = player_names("parts10")
    perm = mirror_permutation(names)
    assert [names[i] for i in perm][:4] == ["head", "torso", "right_upper_arm", "left_upper_arm"]
    assert names[int(perm[-1])] == "context" and torch.equal(perm[perm], torch.arange(len(names)))
    assert mirror_permutation(player_names("parts4")) is None


def test_coalitions_only_move_players_with_a_pixel():
    person = make_person(3, LinearScorer())
    person.masks[1] = False
    kinds, Z = person_coalitions(person, 5, seed=0)
    assert list(kinds[:2]) == ["empty", "full"] and (Z[:, 1] == 0).all()
    assert Z[1].sum() == len(person.present)


def test_learns_an_additive_game(trained):
    """Trained a few seconds, the explainer's error on unseen persons falls well below the uniform split's."""
    scorer, ckpt, _ = trained
    errors, uniform = [], []
    for k in range(100, 116):
        person = make_person(k, scorer)
        exp = FastShapParts(scorer, weights=ckpt).explain(person.image, person.masks)
        exact = additive_shapley(person, scorer)[None].double()
        errors.append(float(relative_error(exp.relevance.double(), exact)[0]))
        present = person.present
        flat = torch.zeros(1, P, dtype=torch.float64)
        flat[0, present] = float(exact.sum()) / len(present)
        uniform.append(float(relative_error(flat, exact)[0]))
    assert np.median(errors) < 0.4, errors
    assert np.median(errors) < 0.5 * np.median(uniform), (errors, uniform)


def test_efficiency_is_exact_and_missing_parts_get_zero(trained):
    scorer, ckpt, _ = trained
    person = make_person(7, scorer, drop=False)
    person.masks[2] = False                               # a part the keypoints did not place
    exp = FastShapParts(scorer, weights=ckpt).explain(person.image, person.masks)
    assert exp.relevance.shape == (1, P) and exp.saliency.shape == (1, SIZE, SIZE)
    assert exp.relevance[0, 2] == 0
    gap = float(exp.full_score[0] - exp.empty_score[0])
    assert abs(float(exp.relevance.sum()) - gap) < 1e-5 * max(1.0, abs(gap))
    assert float(exp.full_score[0]) == pytest.approx(float(scorer(person.image[None])[0, 0]), abs=1e-6)
    assert exp.n_forward == 2 and exp.n_explainer_forward == 1 and exp.options["n_explainer_forward"] == 1
    assert exp.options["grouping"] == GROUPING and exp.method == "fastshap"


def test_guard_refuses_another_model_grouping_or_regions(trained, tmp_path):
    scorer, ckpt, _ = trained
    with pytest.raises(ValueError, match="trained for model weights"):
        FastShapParts(LinearScorer((0.9, -0.6, 0.3)), weights=ckpt)
    with pytest.raises(ValueError, match="part grouping 'parts4', got 'parts10'"):
        FastShapParts(scorer, weights=ckpt, grouping="parts10")
    with pytest.raises(ValueError, match="perturbation"):
        FastShapParts(scorer, weights=ckpt, perturbation="blur")
    person = make_person(1, scorer)
    method = FastShapParts(scorer, weights=ckpt)
    with pytest.raises(ValueError, match=f"the {P} player masks"):
        method.explain(person.image, person.masks[:3])
    with pytest.raises(BudgetError):
        method.explain(person.image, person.masks, budget=1)


def test_weights_file_round_trip_and_bad_files(trained, tmp_path):
    scorer, ckpt, _ = trained
    ckpt.heldout = {"median_rel_l2": 0.1}
    path = ckpt.save(tmp_path / "w.pt")
    loaded = FastShapCheckpoint.load(path)
    assert loaded.players == player_names(GROUPING) and loaded.heldout == {"median_rel_l2": 0.1}
    assert loaded.digest() == ckpt.digest()
    person = make_person(2, scorer)
    a = FastShapParts(scorer, weights=path).explain(person.image, person.masks).relevance
    b = FastShapParts(scorer, weights=ckpt).explain(person.image, person.masks).relevance
    assert torch.equal(a, b)
    torch.save({"format": "something else"}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="bad.pt is not a xai-audit/fastshap-parts version 1"):
        FastShapCheckpoint.load(tmp_path / "bad.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        FastShapCheckpoint.load(tmp_path / "missing.pt")


def test_exact_check_records_accuracy(trained):
    scorer, ckpt, _ = trained
    record = exact_check(ckpt, [make_person(k, scorer) for k in (200, 201)])
    assert record["persons"] == 2 and record["model_forwards"] <= 2 * 2 ** P
    assert 0 <= record["median_rel_l2"] < record["uniform_split_median_rel_l2"]


def test_cache_resume_gives_identical_rows(tmp_path):
    scorer = LinearScorer()
    persons = [make_person(k, scorer) for k in range(7)]
    spec = {"pairs": 4, "seed": 3}
    once = CoalitionCache(tmp_path / "once", spec, block=3)
    once.build(persons, PERTURBATION)
    resumed = CoalitionCache(tmp_path / "resumed", spec, block=3)
    resumed.build(persons, PERTURBATION, limit=4)          # interrupted inside the second block
    assert resumed.read().num_rows < once.read().num_rows
    resumed.build(persons, PERTURBATION)
    assert resumed.read().equals(once.read())
    with pytest.raises(ValueError, match="pairs: 4 != 5"):
        CoalitionCache(tmp_path / "once", {"pairs": 5, "seed": 3}, block=3).build(persons, PERTURBATION)


def test_bayes_with_the_network_as_prior(trained):
    """The hybrid refuses weights without a held-out check; with one it keeps efficiency, spends the budget's model
    forwards and one explainer forward, and at 4 forwards beats plain BayesShapley on unseen persons."""
    scorer, ckpt, _ = trained
    with pytest.raises(ValueError, match="no held-out check"):
        FastShapBayesShapley(scorer, weights=dataclasses.replace(ckpt, heldout={}))
    checked = dataclasses.replace(ckpt, heldout=exact_check(ckpt, [make_person(k, scorer) for k in (300, 301, 302)]))
    method = FastShapBayesShapley(scorer, weights=checked)
    hybrid, plain = [], []
    for k in range(100, 116):
        person = make_person(k, scorer, drop=False)
        exp = method.explain(person.image, person.masks, budget=4)
        exact = additive_shapley(person, scorer)[None].double()
        hybrid.append(float(relative_error(exp.relevance.double(), exact)[0]))
        game = RegionGame(scorer, person.image, person.masks.float(), PERTURBATION, 64)
        est = bayes_shapley(game, P, 4, np.random.default_rng(0))
        plain.append(float(relative_error(est.phi.double(), exact)[0]))
    gap = float(exp.full_score[0] - exp.empty_score[0])
    assert abs(float(exp.relevance.sum()) - gap) < 1e-5 * max(1.0, abs(gap))
    assert exp.n_forward == 4 and exp.n_explainer_forward == 1 and exp.method == "fastshap_bayes"
    assert exp.options["prior_relative_error"] == checked.heldout["median_rel_l2"]
    assert np.median(hybrid) < 0.7 * np.median(plain), (hybrid, plain)
    exact_path = method.explain(person.image, person.masks, budget=2 ** P)       # enumeration: the network unused
    assert exact_path.n_forward == 2 ** P and exact_path.n_explainer_forward == 0
    assert torch.allclose(exact_path.relevance.double(), additive_shapley(person, scorer)[None].double(), atol=1e-5)
    with pytest.raises(ValueError, match="no held-out check"):
        FastShapBayesShapley(scorer, weights=dataclasses.replace(ckpt, heldout={"median_rel_l2": True}))
    alone = make_person(9, scorer, drop=False)
    alone.masks[1:] = False                                  # one player with a pixel: v(all) - v(none) is its value
    one = method.explain(alone.image, alone.masks, budget=4)
    assert one.n_forward == 2 and one.n_explainer_forward == 0
    assert float(one.relevance[0, 0]) == pytest.approx(float(one.full_score[0] - one.empty_score[0]), abs=1e-6)
    assert float(one.relevance[0, 1:].abs().sum()) == 0.0


class RepeatScorer(LinearScorer):
    """The additive black box scored for ``targets`` targets at once (the same model, so the same fingerprint),
    target t's score scaled by ``scales[t]`` (so a mixed-up column shows)."""

    def __init__(self, targets: int, scales=(1.0, -2.0, 3.0), chunk_size: int = 64):
        super().__init__()
        self.num_targets, self.chunk_size = targets, chunk_size
        self.scales = torch.tensor(scales[:targets])

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return super().__call__(images) * self.scales


class ScaledScorer(LinearScorer):
    """One target: the additive black box x ``scale`` (the same model)."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return super().__call__(images) * self.scale


def two_persons(scorer: LinearScorer):
    """One image holding persons 11 and 12 (12 pasted over 11 where its masks are) and their masks [2, P, H, W];
    person 12 lacks a part."""
    a, b = make_person(11, scorer, drop=False), make_person(12, scorer, drop=False)
    b.masks[1] = False
    image = a.image.clone()
    pasted = b.masks.any(0)
    image[:, pasted] = b.image[:, pasted]
    a.masks &= ~pasted
    return image, torch.stack([a.masks, b.masks])


def test_per_target_regions_explain_every_person_in_one_call(trained):
    """Each person's own players [T, P, H, W] in one call: the values of one call per person (up to float
    rounding), 1 + T model forwards (the image, shared, and each person's empty coalition), 1 explainer forward."""
    scorer, ckpt, _ = trained
    image, masks = two_persons(scorer)
    singles = [FastShapParts(ScaledScorer(s), weights=ckpt).explain(image, masks[t])
               for t, s in enumerate((1.0, -2.0))]
    for chunk in (64, 1):                                     # one scorer call, and one image a call
        both = FastShapParts(RepeatScorer(2, chunk_size=chunk), weights=ckpt).explain(image, masks)
        assert both.n_forward == 3 and both.n_explainer_forward == 1
        assert both.relevance.shape == (2, P) and both.saliency.shape == (2, SIZE, SIZE)
        assert both.relevance[1, 1] == 0                                     # person 12's missing part: a dummy
        for t, one in enumerate(singles):
            assert torch.allclose(both.relevance[t], one.relevance[0], atol=1e-5)
            assert torch.allclose(both.saliency[t], one.saliency[0], atol=1e-5)
            assert float(both.empty_score[t]) == pytest.approx(float(one.empty_score[0]), abs=1e-6)
            assert float(both.full_score[t]) == pytest.approx(float(one.full_score[0]), abs=1e-6)
    assert float(singles[0].empty_score[0]) != pytest.approx(float(-0.5 * singles[1].empty_score[0]), abs=1e-6)
    with pytest.raises(BudgetError):
        FastShapParts(RepeatScorer(2), weights=ckpt).explain(image, masks, budget=1)


def test_per_target_regions_are_checked(trained):
    scorer, ckpt, _ = trained
    image, masks = two_persons(scorer)
    with pytest.raises(ValueError, match="hold 2 targets' players, the scorer has 3 targets"):
        FastShapParts(RepeatScorer(3), weights=ckpt).explain(image, masks)
    blank = masks.clone()
    blank[1] = False
    with pytest.raises(ValueError, match=r"target\(s\) \[1\] have no region with a pixel"):
        FastShapParts(RepeatScorer(2), weights=ckpt).explain(image, blank)
    with pytest.raises(ValueError, match=r"or one stack per target \[T, P, H, W\]"):
        FastShapParts(RepeatScorer(2), weights=ckpt).explain(image, masks[:, :3])
    checked = dataclasses.replace(ckpt, heldout={"median_rel_l2": 0.5})
    with pytest.raises(ValueError, match=rf"the {P} player masks \[{P}, H, W\] in the order"):   # one game per call
        FastShapBayesShapley(RepeatScorer(2), weights=checked).explain(image, masks, budget=8)
    from explainers.occlusion import Occlusion
    with pytest.raises(ValueError, match="which this method does not take"):
        Occlusion(RepeatScorer(2), perturbation=PERTURBATION).explain(image, masks)


def test_per_target_regions_awkward_cases(trained):
    """No target: empty results, no forward. One player of a target with a pixel: its relevance is the whole gap
    (efficiency), the others exactly 0. An odd-sized image (47 x 33, persons cut by its edges) still gives each
    target its one-target call."""
    scorer, ckpt, _ = trained
    image, masks = two_persons(scorer)
    none = FastShapParts(RepeatScorer(0), weights=ckpt).explain(image, masks[:0])
    assert none.relevance.shape == (0, P) and none.saliency.shape == (0, SIZE, SIZE) and none.n_forward == 0
    alone = masks.clone()
    alone[0, 1:] = False                                          # target 0: one player with a pixel
    exp = FastShapParts(RepeatScorer(2), weights=ckpt).explain(image, alone)
    assert (exp.relevance[0, 1:] == 0).all()
    assert float(exp.relevance[0, 0]) == pytest.approx(float(exp.full_score[0] - exp.empty_score[0]), abs=1e-6)
    odd_image, odd = image[:, 1:48, 7:40].contiguous(), masks[:, :, 1:48, 7:40].contiguous()
    both = FastShapParts(RepeatScorer(2), weights=ckpt).explain(odd_image, odd)
    assert both.saliency.shape == (2, 47, 33)
    for t, s in enumerate((1.0, -2.0)):
        one = FastShapParts(ScaledScorer(s), weights=ckpt).explain(odd_image, odd[t])
        assert torch.allclose(both.relevance[t], one.relevance[0], atol=1e-5)


def test_person_crops_equal_the_full_image_crops():
    """The network's inputs cropped inside each person's mask box (one roi_align for the image planes, the masks
    cut to their box plus a margin) equal the crop of full-size planes per person, as training built them, also
    for persons cut by the image's edges and float mask weights."""
    g = torch.Generator().manual_seed(3)
    H, W = 37, 29
    image, baseline = torch.rand(3, H, W, generator=g), torch.rand(3, H, W, generator=g)
    masks = torch.zeros(3, P, H, W)
    masks[0, :2, 5:20, 8:14] = 1.0
    masks[0, 3, 20:30, 9:12] = 0.4
    masks[1, 0, 0:6, 0:4] = 1.0                                  # at the top-left corner
    masks[1, 4, 30:37, 20:29] = 0.7                              # to the bottom-right corner
    masks[2, 2, 17, 11] = 1.0                                    # one pixel
    x, height = persons_inputs(image, baseline, masks, CROP)
    for n in range(3):
        window = CROP.window(masks[n])
        planes = torch.cat([(image - IMAGE_MEAN) / IMAGE_STD, (image - baseline) / IMAGE_STD, masks[n],
                            torch.ones_like(image[:1])])
        torch.testing.assert_close(x[n], CROP(planes, window), atol=1e-5, rtol=0)
        assert float(height[n]) == pytest.approx(float(window[3] - window[1]) / H)
    bools, _ = persons_inputs(image, baseline, masks > 0, CROP)
    torch.testing.assert_close(bools[:, 6:6 + P], persons_inputs(image, baseline, (masks > 0).float(), CROP)[0][
        :, 6:6 + P])
    with pytest.raises(ValueError, match=r"no player of person\(s\) \[1\] has a pixel"):
        persons_inputs(image, baseline, masks[:2] * torch.tensor([1.0, 0.0])[:, None, None, None], CROP)
    none, heights = persons_inputs(image, baseline, masks[:0], CROP)
    assert none.shape == (0, 7 + P, *CROP.size) and heights.shape == (0,)
