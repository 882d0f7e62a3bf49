"""Explainers on awkward inputs (issue 16): one, two or three players; label maps with gaps and empty masks; scorers
with no targets; RISE / D-RISE maps that must not follow the coverage of the masks drawn; tiny images; budgets below
a method's minimum. Values are checked against exact answers on synthetic games, not just "no crash".

The synthetic games: an image of ones, hidden with a constant 0, so that the mean of a composite over region r is
exactly the coalition value z_r; the scorer maps those means through a known multilinear game (closed-form Shapley
values) and records every image it sees (the design a method drew)."""
from __future__ import annotations

import itertools

import pytest
import torch

import explainers.rise as rise_module
from detection.models.blackbox import CallableDetector
from detection.scorers import DRiseScorer
from explainers import METHODS, BudgetError, DeCam, DRise, KernelShap, Lime, Rise
from explainers.base import as_region_masks
from explainers.perturb import Constant
from explainers.rise import RiseMasks
from tests.learned_fixture import TOY_MODEL_METHODS, learned_kwargs
from tests.rexl_fixture import GRID as REXL_GRID

H = W = 12
ZERO = Constant(0.0)
A = torch.tensor([0.7, -0.4, 0.25], dtype=torch.float64)           # main effects
PAIRS = {(0, 1): 0.5, (0, 2): -0.3, (1, 2): 0.2}                     # pairwise terms
ALL = 0.9                                                            # a term on the product of every player


def stripes(ids) -> torch.Tensor:
    """A label map [H, W]: len(ids) vertical stripes carrying those label ids."""
    col = torch.div(torch.arange(W) * len(ids), W, rounding_mode="floor")
    return torch.as_tensor(ids)[col].view(1, W).expand(H, W).clone()


def stack(M: int) -> torch.Tensor:
    """The same M stripes as a bool stack [M, H, W]."""
    return stripes(range(M))[None] == torch.arange(M).view(-1, 1, 1)


def game(z: torch.Tensor) -> torch.Tensor:
    """Three targets over M <= 3 players: additive; with pairwise terms; with a term on all players too."""
    z = z.double()
    M = z.shape[1]
    add = z @ A[:M]
    pair = add + sum((b * z[:, i] * z[:, j] for (i, j), b in PAIRS.items() if j < M), torch.zeros_like(add))
    return torch.stack([add, pair, pair + ALL * z.prod(1)], 1)


def closed_form(M: int) -> torch.Tensor:
    """Shapley values [3, M] of ``game``: each term shared equally among its players."""
    phi = A[:M].clone()
    pair = phi.clone()
    for (i, j), b in PAIRS.items():
        if j < M:
            pair[i] += b / 2
            pair[j] += b / 2
    return torch.stack([phi, pair, pair + ALL / M])


class GameScorer:
    """Scores = fn(region means of channel 0) for the regions ``masks`` [M, H, W]; records every image."""

    device = torch.device("cpu")
    chunk_size = 16

    def __init__(self, masks: torch.Tensor, fn=game, num_targets: int = 3):
        flat = masks.reshape(masks.shape[0], -1).float()
        self.weights = (flat / flat.sum(1, keepdim=True)).T                        # [HW, M]
        self.fn, self.num_targets, self.seen = fn, num_targets, []

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.seen.append(images[:, 0].clone())
        return self.fn(images[:, 0].reshape(images.shape[0], -1) @ self.weights).float()

    def design(self) -> torch.Tensor:
        """The coalitions [N, M] of every image scored so far."""
        seen = torch.cat(self.seen)
        return (seen.reshape(seen.shape[0], -1) @ self.weights).double()


def ones(h=H, w=W):
    return torch.ones(3, h, w)


SHAPLEY = ("exact_shapley", "kernel_shap", "bayes_shapley", "permutation_shapley", "continuous_coalition_shapley",
           "sag", "fastshap", "fastshap_bayes")           # SAG's relevance: its heuristic's BayesShapley values
MINIMUM = {"exact_shapley": lambda M, T: 2 ** M, "kernel_shap": lambda M, T: min(2 ** M, 3),
           "bayes_shapley": lambda M, T: min(2 ** M, 4), "permutation_shapley": lambda M, T: 2 * M,
           "continuous_coalition_shapley": lambda M, T: 2 if M == 1 else 3, "lime": lambda M, T: 2,
           "occlusion": lambda M, T: M + 1, "rise": lambda M, T: 1, "drise": lambda M, T: 1,
           "decam": lambda M, T: 8 * T, "integrated_gradients": lambda M, T: 6 * T,
           "input_x_gradient": lambda M, T: 3 * T, "grad_cam": lambda M, T: 3 * T,
           "igos_pp": lambda M, T: 12 * T,                       # one iteration of one IG step
           "sag": lambda M, T: min(2 ** M, 4),                   # its heuristic's (BayesShapley's) minimum
           "rexl": lambda M, T: 2 + T * (REXL_GRID ** 2 - 1),     # one roll-out per target (tests/rexl_fixture.py)
           "fastshap": lambda M, T: 2,                           # v(all), v(none): the network explains the rest
           "fastshap_bayes": lambda M, T: min(2 ** M, 4),        # BayesShapley's designed pairs on top
           "fastshap_grid": lambda M, T: 2, "fastshap_grid_detector": lambda M, T: 2,
           "fastshap_grid_bayes": lambda M, T: 4}                 # the ends and one designed pair of its cells


def test_minimum_table_covers_every_method():
    assert set(MINIMUM) == set(METHODS)


def make(name: str, scorer, **kw):
    """The method on ``scorer`` with the constant-0 substrate; a learned explainer (``needs_trained_weights``) with a
    trained file of tests/learned_fixture.py for the scorer's weights (RExL: the tiny trained policy; a fixed-player
    method, FastSHAP: a network for the regions' count, built when ``explain`` sees them)."""
    kw.setdefault("perturbation", ZERO)
    cls = METHODS[name]
    if cls.fixed_players and "weights" not in kw:
        return _ForRegions(cls, scorer, kw)
    if cls.needs_classes and "weights" not in kw:
        return _ForImage(cls, scorer, kw)
    return cls(scorer, **{**learned_kwargs(cls, scorer, perturbation=kw["perturbation"]), **kw})


class _ForImage:
    """A method whose trained file plays at one image size (FastShapGrid): the file is chosen by the image
    ``explain`` is given."""

    def __init__(self, cls, scorer, kw):
        self.cls, self.scorer, self.kw = cls, scorer, kw

    def explain(self, image, regions=None, **kw):
        size = tuple(torch.as_tensor(image).shape[-2:])
        files = learned_kwargs(self.cls, self.scorer, perturbation=self.kw["perturbation"], image_size=size)
        return self.cls(self.scorer, **files, **self.kw).explain(image, regions, **kw)


class _ForRegions:
    """A fixed-player method whose trained file is chosen by the regions ``explain`` is given (one network output per
    player); no regions: the method itself refuses them."""

    def __init__(self, cls, scorer, kw):
        self.cls, self.scorer, self.kw = cls, scorer, kw

    def explain(self, image, regions=None, **kw):
        players = 1 if regions is None or torch.as_tensor(regions).ndim != 3 else torch.as_tensor(regions).shape[0]
        files = learned_kwargs(self.cls, self.scorer, players, self.kw["perturbation"])
        return self.cls(self.scorer, **files, **self.kw).explain(image, regions, **kw)


# ----------------------------------------------------------------------------------------------- 1. few players
@pytest.mark.parametrize("M", [1, 2, 3])
@pytest.mark.parametrize("name", SHAPLEY)
def test_shapley_estimators_give_the_exact_values_of_one_two_and_three_players(name, M):
    """Budget 48 covers all 2^M coalitions: exact, KernelSHAP and Bayes enumerate them; permutation pairs are exact
    on games of order <= 2 (every target when M <= 2); Beta's linear fit is exact on the additive target and, with one
    player, on every target (phi = v(all) - v(none)). Permutation and Beta raised on one player."""
    scorer = GameScorer(stack(M))
    exp = make(name, scorer).explain(ones(), stack(M), budget=48, seed=0)
    truth = closed_form(M).float()
    assert exp.relevance.shape == (3, M)
    torch.testing.assert_close(exp.relevance.sum(1), exp.full_score - exp.empty_score, atol=1e-5, rtol=0)
    torch.testing.assert_close(exp.full_score - exp.empty_score, truth.sum(1), atol=1e-5, rtol=0)
    exact_targets = {"permutation_shapley": 3 if M <= 2 else 2,
                     "continuous_coalition_shapley": 3 if M == 1 else 1,
                     "fastshap": 3 if M == 1 else 0}.get(name, 3)   # its (untrained) network: efficiency only
    torch.testing.assert_close(exp.relevance[:exact_targets], truth[:exact_targets], atol=1e-5, rtol=0)
    assert exp.n_forward <= 48
    if M == 1:
        assert exp.n_forward == 2                              # v(none) and v(all) are all there is to know
    if name in ("exact_shapley", "kernel_shap", "bayes_shapley", "sag"):
        assert exp.n_forward == 2 ** M


@pytest.mark.parametrize("M", [1, 2, 3])
def test_occlusion_of_few_regions_is_leave_one_out(M):
    exp = make("occlusion", GameScorer(stack(M))).explain(ones(), stack(M), budget=48)
    Z = torch.ones(M + 1, M, dtype=torch.float64)
    Z[1:] -= torch.eye(M, dtype=torch.float64)
    v = game(Z)
    torch.testing.assert_close(exp.relevance, (v[0] - v[1:]).T.float(), atol=1e-5, rtol=0)
    assert exp.n_forward == M + 1


def lime_closed_form(Z: torch.Tensor, Y: torch.Tensor, kernel_width: float, alpha: float) -> torch.Tensor:
    """LIME's weighted ridge (unpenalised intercept), solved as one augmented least-squares problem [T, M]."""
    M = Z.shape[1]
    cos = Z.sum(1) / (Z.norm(dim=1).clamp_min(1e-12) * M ** 0.5)
    w = torch.exp(-((1 - cos) ** 2) / kernel_width ** 2).sqrt()[:, None]
    X = torch.cat([Z, torch.ones(len(Z), 1, dtype=Z.dtype)], 1)
    penalty = torch.cat([alpha ** 0.5 * torch.eye(M, dtype=Z.dtype), torch.zeros(M, 1, dtype=Z.dtype)], 1)
    coef = torch.linalg.lstsq(torch.cat([w * X, penalty]), torch.cat([w * Y, torch.zeros(M, Y.shape[1],
                                                                                          dtype=Y.dtype)])).solution
    return coef[:M].T


@pytest.mark.parametrize("M", [1, 2, 3])
@pytest.mark.parametrize("alpha", [1.0, 0.0])
def test_lime_of_few_regions_is_its_weighted_ridge_on_the_drawn_design(M, alpha):
    scorer = GameScorer(stack(M))
    exp = Lime(scorer, perturbation=ZERO, alpha=alpha).explain(ones(), stack(M), budget=48, seed=0)
    Z = scorer.design()
    assert len(Z) == 48 and torch.allclose(Z, Z.round(), atol=1e-6)    # 0/1 coalitions, as LIME draws them
    Z = Z.round()
    torch.testing.assert_close(exp.relevance.double(), lime_closed_form(Z, game(Z), 0.25, alpha), atol=2e-5,
                               rtol=1e-4)
    if alpha == 0:                                                  # unpenalised: the additive target exactly
        torch.testing.assert_close(exp.relevance[0].double(), A[:M], atol=1e-4, rtol=0)


@pytest.mark.parametrize("M", [1, 2, 3])
def test_decam_of_few_regions_finds_the_best_mask(M):
    """Fitness v(z) - sparsity * mean(z) on the additive target: keep region r iff A_r > sparsity / M."""
    scorer = GameScorer(stack(M), fn=lambda z: game(z)[:, :1], num_targets=1)
    exp = DeCam(scorer, perturbation=ZERO, sparsity=0.5).explain(ones(), stack(M), budget=400, seed=0)
    best = (A[:M] > 0.5 / M).float()
    torch.testing.assert_close(exp.relevance[0], best, atol=0.05, rtol=0)


@pytest.mark.parametrize("M", [1, 2, 3])
@pytest.mark.parametrize("name", ["rise", "drise"])
def test_rise_relevance_of_few_regions_is_the_mean_saliency_inside_each(name, M):
    exp = make(name, GameScorer(stack(M)), grid=4).explain(ones(), stack(M), budget=40, seed=0)
    flat = stack(M).reshape(M, -1).float()
    torch.testing.assert_close(exp.relevance, exp.saliency.reshape(3, -1) @ (flat / flat.sum(1, keepdim=True)).T)


# ----------------------------------------------------------------------------------------------- budgets
@pytest.mark.parametrize("M", [1, 2, 3])
@pytest.mark.parametrize("name", TOY_MODEL_METHODS)
def test_budgets_below_the_minimum_name_the_method_the_regions_and_the_minimum(name, M):
    scorer = GameScorer(stack(M))
    minimum = MINIMUM[name](M, 3)
    if minimum > 1:
        with pytest.raises(BudgetError) as err:
            make(name, scorer).explain(ones(), stack(M), budget=minimum - 1)
        message = str(err.value)
        assert name in message and f"at least {minimum} forwards" in message, message
        if name not in ("decam", "rexl"):                           # their minimum depends on the targets only
            assert f"{M} region" in message, message
    exp = make(name, scorer).explain(ones(), stack(M), budget=minimum)
    assert exp.n_forward <= minimum and torch.isfinite(exp.relevance).all()
    if name in SHAPLEY:
        torch.testing.assert_close(exp.relevance.sum(1), exp.full_score - exp.empty_score, atol=1e-5, rtol=0)


def test_a_budget_that_is_not_positive_is_refused_by_name():
    with pytest.raises(BudgetError, match="rise: budget must be a positive number of forward passes, got 0"):
        Rise(GameScorer(stack(2))).explain(ones(), budget=0)


# ----------------------------------------------------------------------------------------------- 2. gaps
GAPPY = stripes((0, 3, 7))
DENSE = stripes((0, 1, 2))
REAL = [0, 3, 7]


def _with_empty(masks: torch.Tensor, at: int) -> torch.Tensor:
    return torch.cat([masks[:at], torch.zeros_like(masks[:1]), masks[at:]])


@pytest.mark.parametrize("form", ["label map", "bool stack", "soft stack"])
@pytest.mark.parametrize("name", TOY_MODEL_METHODS)
def test_regions_without_a_pixel_are_dummies_not_players(name, form):
    """Label ids 0, 3, 7 (ids 1, 2, 4, 5, 6 have no pixel), or a mask stack with all-zero masks: the method runs on
    the 3 real regions only (the same forwards and numbers as the dense input) and every empty region gets exactly
    0, in its own column. KernelSHAP at budget 48 was no longer exact, 5 phantom players got LIME relevance up to 0.2
    and exact Shapley values refused a budget of 48."""
    if form == "label map":
        gappy, dense, real = GAPPY, DENSE, REAL
    else:
        dense = stack(3).float() * (0.8 if form == "soft stack" else 1.0)
        gappy = _with_empty(_with_empty(dense, 1), 0)                 # real regions at columns 1, 3, 4
        real = [1, 3, 4]
        gappy = gappy.bool() if form == "bool stack" else gappy
        dense = dense.bool() if form == "bool stack" else dense
    R = int(gappy.max()) + 1 if form == "label map" else gappy.shape[0]
    if METHODS[name].fixed_players and form == "label map":       # its trained players are masks in trained order
        with pytest.raises(ValueError, match="regions must be the 1 player masks"):
            make(name, GameScorer(stack(3))).explain(ones(), gappy, budget=48, seed=4)
        return
    a = make(name, GameScorer(stack(3))).explain(ones(), gappy, budget=48, seed=4)
    b = make(name, GameScorer(stack(3))).explain(ones(), dense, budget=48, seed=4)
    assert a.relevance.shape == (3, R)
    phantom = [r for r in range(R) if r not in real]
    assert torch.equal(a.relevance[:, phantom], torch.zeros(3, len(phantom)))
    if name == "fastshap":          # a network for 5 players is not the one for 3: efficiency, not equal numbers
        torch.testing.assert_close(a.relevance.sum(1), b.relevance.sum(1), atol=1e-5, rtol=0)
        assert a.n_forward == b.n_forward == 2
        return
    torch.testing.assert_close(a.relevance[:, real], b.relevance, atol=1e-6, rtol=0)
    torch.testing.assert_close(a.saliency, b.saliency, atol=1e-6, rtol=0)
    assert a.n_forward == b.n_forward


def test_kernel_shap_counts_only_the_real_players_of_a_gappy_label_map():
    exp = KernelShap(GameScorer(stack(3)), perturbation=ZERO).explain(ones(), GAPPY, budget=48)
    assert exp.n_forward == 8                                          # 2^3, not 48 forwards for 8 "players"
    torch.testing.assert_close(exp.relevance[:, REAL], closed_form(3).float(), atol=1e-5, rtol=0)


def test_region_masks_that_are_all_empty_or_not_masks_are_refused():
    scorer = GameScorer(stack(2))
    for name in TOY_MODEL_METHODS:
        with pytest.raises(ValueError, match="all 2 regions are empty"):
            make(name, scorer).explain(ones(), torch.zeros(2, H, W), budget=48)
    labels = torch.full((H, W), -1)                                   # every pixel outside every region
    with pytest.raises(ValueError, match="region"):
        make("occlusion", scorer).explain(ones(), labels)
    bad = stack(2).float()
    bad[0, 0, 0] = -0.5
    with pytest.raises(ValueError, match="finite and >= 0"):
        make("occlusion", scorer).explain(ones(), bad)
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="finite and >= 0"):
        make("occlusion", scorer).explain(ones(), bad)


def test_as_region_masks_keeps_the_label_ids_as_columns():
    masks = as_region_masks(GAPPY, (H, W))
    assert masks.shape == (8, H, W)
    assert masks.reshape(8, -1).sum(1).nonzero().view(-1).tolist() == REAL


# ----------------------------------------------------------------------------------------------- 3. no targets
def _empty_detector_scorer() -> DRiseScorer:
    det = CallableDetector(lambda images: [{"boxes": [], "scores": [], "labels": []} for _ in images], ["person"])
    detections = det.detect(ones()[None])[0]
    assert detections.boxes.shape == (0, 4)
    return DRiseScorer.for_detections(det, detections)


@pytest.mark.parametrize("regions", [None, "stripes"])
@pytest.mark.parametrize("name", TOY_MODEL_METHODS)
def test_a_scorer_without_targets_gives_an_explanation_of_no_targets(name, regions):
    """D-RISE on an image with no detection raised 'cannot reshape tensor of 0 elements'; DE-CAM divided by zero."""
    masks = None if regions is None else stack(3)
    for scorer in (_empty_detector_scorer(), GameScorer(stack(3), fn=lambda z: z[:, :0], num_targets=0)):
        if METHODS[name].fixed_players and masks is None:          # no default regions: its trained players only
            with pytest.raises(ValueError, match="regions must be the"):
                make(name, scorer).explain(ones(), masks, budget=48, seed=0)
            continue
        exp = make(name, scorer).explain(ones(), masks, budget=48, seed=0)
        assert exp.saliency.shape == (0, H, W) and exp.n_forward == 0 and exp.method == name
        if masks is not None:
            assert exp.relevance.shape == (0, 3)


def test_drise_readme_example_on_an_image_without_detections():
    exp = DRise(_empty_detector_scorer()).explain(ones(), budget=64)
    assert exp.saliency.shape == (0, H, W) and exp.relevance is None


# ----------------------------------------------------------------------------------------------- 10. RISE coverage
class Fixed:
    """Scores that ignore the image: a constant per target."""

    device = torch.device("cpu")
    chunk_size = 16
    num_targets = 2

    def __call__(self, images):
        return torch.tensor([[0.8, -0.3]]).expand(images.shape[0], 2)


@pytest.mark.parametrize("cls", [Rise, DRise])
def test_rise_maps_of_a_scorer_that_ignores_the_image_are_flat(cls):
    """Plain RISE divided by the expected coverage N p: pixels the drawn masks covered more often looked important,
    even to a model that does not look at the image. Normalised by the coverage drawn, the map is the score itself;
    centred, it is zero."""
    image = torch.rand(3, 40, 40, generator=torch.Generator().manual_seed(0))
    plain = cls(Fixed()).explain(image, budget=64, seed=0)
    torch.testing.assert_close(plain.saliency, torch.tensor([0.8, -0.3]).view(2, 1, 1).expand(2, 40, 40),
                               atol=1e-5, rtol=0)
    centred = cls(Fixed(), center=True).explain(image, budget=64, seed=0)
    torch.testing.assert_close(centred.saliency, torch.zeros(2, 40, 40), atol=1e-5, rtol=0)


def test_plain_rise_is_the_score_weighted_mean_of_the_masks_drawn():
    """saliency(x) = sum_i s_i M_i(x) / sum_i M_i(x), from the masks the scorer actually saw."""
    scorer = GameScorer(stack(3))
    exp = Rise(scorer, perturbation=ZERO, grid=4).explain(ones(), budget=40, seed=1)
    masks = torch.cat(scorer.seen).double()                                          # image 1, baseline 0: masks
    scores = game(scorer.design())
    expected = torch.einsum("nt,nhw->thw", scores, masks) / masks.sum(0)
    torch.testing.assert_close(exp.saliency.double(), expected, atol=1e-5, rtol=1e-5)


class CornerHeavyMasks(RiseMasks):
    """RISE masks whose cells in the bottom-right quarter of the grid are kept with probability 0.9, not p."""

    def draw(self, n, generator):
        g = self.grid
        keep = torch.full((g, g), self.p)
        keep[g // 2:, g // 2:] = 0.9
        cells = (torch.rand(n, g, g, generator=generator) < keep).float()
        dy = torch.randint(0, self.cell[0], (n,), generator=generator)
        dx = torch.randint(0, self.cell[1], (n,), generator=generator)
        right = torch.bmm(cells, self.cols_t[dx])
        return torch.bmm(self.rows[dy], right), dy, right


class TopLeft:
    """Sees only the top-left quadrant: its mean brightness."""

    device = torch.device("cpu")
    chunk_size = 64
    num_targets = 1

    def __call__(self, images):
        h, w = images.shape[-2:]
        return images[:, :, :h // 2, :w // 2].mean((1, 2, 3))[:, None]


@pytest.mark.parametrize("center", [False, True])
def test_masks_that_cover_a_corner_more_often_do_not_make_it_salient(monkeypatch, center):
    monkeypatch.setattr(rise_module, "RiseMasks", CornerHeavyMasks)
    image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.5
    sal = Rise(TopLeft(), perturbation=ZERO, center=center).explain(image, budget=1000, seed=0).saliency[0]
    tl, tr, bl, br = sal[:16, :16].mean(), sal[:16, 16:].mean(), sal[16:, :16].mean(), sal[16:, 16:].mean()
    lift = tl - (tr + bl) / 2                                   # what the model really sees
    assert lift > 0
    assert abs(br - (tr + bl) / 2) < 0.2 * lift, (float(tl), float(tr), float(bl), float(br))
    peak = int(sal.argmax())
    assert peak // 32 < 16 and peak % 32 < 16


# ----------------------------------------------------------------------------------------------- tiny images
@pytest.mark.parametrize("size", [(1, 1), (1, 3), (2, 1), (3, 3)])
@pytest.mark.parametrize("name", TOY_MODEL_METHODS)
def test_tiny_images(name, size):
    """A single pixel (or a sliver) explained as a whole and as one region: finite maps of the right shape; the
    Shapley family and occlusion give v(image) - v(hidden) for the one region."""
    h, w = size
    image = torch.rand(3, h, w, generator=torch.Generator().manual_seed(1)) * 0.5 + 0.5
    region = torch.ones(1, h, w, dtype=torch.bool)
    scorer = GameScorer(region)
    budget = max(48, MINIMUM[name](1, 3))
    if METHODS[name].fixed_players:                                 # no default regions: its trained players only
        with pytest.raises(ValueError, match="regions must be the"):
            make(name, scorer).explain(image, budget=budget, seed=0)
    else:
        whole = make(name, scorer).explain(image, budget=None if name == "exact_shapley" else budget, seed=0)
        assert whole.saliency.shape == (3, h, w) and torch.isfinite(whole.saliency).all()
    one = make(name, scorer).explain(image, region, budget=budget, seed=0)
    assert one.relevance.shape == (3, 1) and torch.isfinite(one.relevance).all()
    if name in SHAPLEY or name == "occlusion":
        z = image[0].mean().double().view(1, 1)
        torch.testing.assert_close(one.relevance[:, 0].double(), (game(z) - game(torch.zeros(1, 1)))[0],
                                   atol=1e-5, rtol=0)


def test_an_image_without_pixels_is_refused():
    with pytest.raises(ValueError, match="image"):
        Rise(GameScorer(stack(1))).explain(torch.ones(3, 0, 4), budget=8)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("name", TOY_MODEL_METHODS)
def test_an_image_with_a_non_finite_pixel_is_refused_before_any_forward(name, bad):
    """A NaN or inf pixel would give a map of NaNs, or numbers the model never meant: refused by name, no forward."""
    calls = []

    class Counting(GameScorer):
        def __call__(self, images):
            calls.append(images.shape[0])
            return super().__call__(images)

    image = ones()
    image[1, 2, 3] = bad
    with pytest.raises(ValueError, match=r"image has 1 non-finite values \(NaN or inf\)"):
        make(name, Counting(stack(2))).explain(image, stack(2), budget=max(48, MINIMUM[name](2, 3)))
    assert calls == []


@pytest.mark.parametrize("name", ["sag", "bayes_shapley", "lime"])
def test_a_non_finite_image_is_refused_by_name_before_its_default_superpixels(name):
    """Without regions a region method makes superpixels of the image first (SAG in its own explain): the NaN is
    named there too, not as scikit-image's error."""
    image = ones()
    image[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"image has 1 non-finite values"):
        make(name, GameScorer(stack(2))).explain(image, budget=48)


# ----------------------------------------------------------------------------------------------- superpixels
@pytest.mark.parametrize("name", ["lime", *SHAPLEY])
def test_superpixels_of_a_constant_image_are_the_players(name):
    """Default regions on a flat image (SLIC may return fewer segments than asked for): relevance has one column per
    segment that exists, and the Shapley family stays efficient."""
    from explainers import superpixels

    image = torch.full((3, 6, 6), 0.5)
    segments = superpixels(image, 4)
    weights = torch.linspace(-1, 1, segments.shape[0], dtype=torch.float64)
    scorer = GameScorer(segments, fn=lambda z: (z.double() @ weights)[:, None], num_targets=1)
    budget = 2 ** segments.shape[0] if name == "exact_shapley" else 48
    if METHODS[name].fixed_players:                                 # no default regions: its trained players only
        with pytest.raises(ValueError, match="regions must be the"):
            make(name, scorer).explain(image, budget=budget, seed=0)
        return
    exp = make(name, scorer, n_segments=4).explain(image, budget=budget, seed=0)
    assert exp.relevance.shape == (1, segments.shape[0])
    if name in SHAPLEY:
        torch.testing.assert_close(exp.relevance.sum(1), exp.full_score - exp.empty_score, atol=1e-5, rtol=0)
        torch.testing.assert_close(exp.relevance[0], 0.5 * weights.float(), atol=1e-4, rtol=0)


def test_labels_of_a_few_pixels_each_and_many_ids():
    """Pairs of labels over every combination of 3 of 5 ids: always exactly 3 players, phantom columns 0."""
    for ids in itertools.combinations(range(5), 3):
        exp = KernelShap(GameScorer(stack(3)), perturbation=ZERO).explain(ones(), stripes(ids), budget=8)
        assert exp.n_forward == 8 and exp.relevance.shape == (3, max(ids) + 1)
        torch.testing.assert_close(exp.relevance[:, list(ids)], closed_form(3).float(), atol=1e-5, rtol=0)
        assert not exp.relevance[:, [i for i in range(max(ids) + 1) if i not in ids]].any()



def test_grid_cells_without_a_pixel_are_dummies():
    """A 2 x 3 grid on a 1 x 2 image: only cells 0 and 1 hold a pixel; the other four get exactly 0 and no forwards
    (exact Shapley values refused a budget of 4 for 6 'players' before)."""
    from explainers import grid_regions

    image = torch.rand(3, 1, 2, generator=torch.Generator().manual_seed(0))
    cells = grid_regions(1, 2, 2, 3)
    assert cells.reshape(6, -1).any(1).tolist() == [True, True, False, False, False, False]
    scorer = GameScorer(cells[:2], fn=lambda z: game(z)[:, :1], num_targets=1)
    exp = make("exact_shapley", scorer).explain(image, cells, budget=4)
    assert exp.n_forward == 4 and exp.relevance.shape == (1, 6)
    torch.testing.assert_close(exp.relevance[0, :2].double(), A[:2] * image[0, 0].double(), atol=1e-5, rtol=0)
    assert not exp.relevance[0, 2:].any()
    with pytest.raises(ValueError, match="rows and cols must be >= 1"):
        grid_regions(4, 4, 0, 2)
